// graphile-worker doing the peer benchmark's work on the same database: N trivial jobs, or N chains of 4 jobs
// where each job adds the next. Concurrency 16 (as our worker), one process. Prints jobs per second as JSON.
//   node graphile.mjs <database url> <jobs> [chain]
import { run, makeWorkerUtils } from "graphile-worker";

const [connectionString, jobsArg, mode] = process.argv.slice(2);
const jobs = Number(jobsArg ?? 10000);
const chain = mode === "chain";
const expected = chain ? jobs * 4 : jobs;
let done = 0;

// Both sides get 20 connections for 16 concurrent jobs.
const utils = await makeWorkerUtils({ connectionString });
await utils.migrate();
const specs = [];
for (let i = 0; i < jobs; i++) specs.push({ identifier: "step", payload: { chain: i, step: 1 } });
for (let i = 0; i < specs.length; i += 1000) await utils.addJobs(specs.slice(i, i + 1000));

let resolveDone;
const finished = new Promise((resolve) => (resolveDone = resolve));
const started = process.hrtime.bigint();
const runner = await run({
  connectionString,
  concurrency: 16,
  maxPoolSize: 20,
  noHandleSignals: true,
  pollInterval: 100,
  taskList: {
    step: async (payload, helpers) => {
      if (chain && payload.step < 4) {
        await helpers.addJob("step", { chain: payload.chain, step: payload.step + 1 });
      }
      done += 1;
      if (done >= expected) resolveDone();
    },
  },
});
await finished;
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
await runner.stop();
await utils.release();
console.log(JSON.stringify({ system: "graphile-worker", kind: chain ? "chain4" : "trivial", jobs: done, seconds, jobs_per_s: done / seconds }));
