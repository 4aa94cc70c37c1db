-- The hot-sku reservation as inventory::reserve sends it for one line (a savepoint, the conditional update,
-- the reservation row), in its own transaction.
\set n random(1, 2000000000)
BEGIN;
SAVEPOINT reserve;
UPDATE skus SET reserved = reserved + 1, updated_at = now() WHERE sku = 'ceiling-hot' AND on_hand - reserved >= 1;
RELEASE SAVEPOINT reserve;
COMMIT;
