//! The payment provider's client: Stripe's PaymentIntents API over HTTP, form-encoded, every call with an
//! idempotency key derived from the order (`orderflow_shared::payment`'s keys). It sorts every answer into what
//! the saga needs to decide: authorized, declined, rejected for good, or unknown (retry with the same key). Our
//! record of a payment is `orderflow_shared::payment`'s table.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The outcome is unknown or the provider is briefly unable: retrying with the same key is safe.
    #[error("payment provider unavailable: {0}")]
    Transient(String),
    /// The provider refused the request for good (bad parameters, wrong intent state).
    #[error("payment provider rejected the request ({code}): {message}")]
    Rejected {
        code: String,
        message: String,
        intent_status: Option<String>,
    },
}

/// The result of an authorization that reached a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    Authorized {
        provider_ref: String,
    },
    Declined {
        provider_ref: Option<String>,
        code: String,
    },
    /// No verdict yet: the provider waits for the customer (`requires_action`, 3-D Secure) or settles later
    /// (`processing`, a bank debit).
    Waiting {
        provider_ref: String,
        status: WaitingFor,
    },
}

/// What an undecided authorization waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitingFor {
    /// `requires_action`: the customer.
    Customer,
    /// `processing`: the provider (a bank).
    Provider,
}

impl WaitingFor {
    fn of(status: &str) -> Option<Self> {
        match status {
            "requires_action" => Some(Self::Customer),
            "processing" => Some(Self::Provider),
            _ => None,
        }
    }

    pub fn status(self) -> orderflow_shared::payment::PaymentStatus {
        match self {
            Self::Customer => orderflow_shared::payment::PaymentStatus::RequiresAction,
            Self::Provider => orderflow_shared::payment::PaymentStatus::Processing,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Provider {
    http: reqwest::Client,
    base_url: String,
}

#[derive(Debug, Deserialize)]
struct Intent {
    id: String,
    status: String,
    #[serde(default)]
    last_payment_error: Option<Value>,
}

impl Intent {
    /// What the intent says of its authorization; `None` for a status no authorization ends in.
    fn verdict(self) -> Option<Authorization> {
        match self.status.as_str() {
            "requires_capture" | "succeeded" => Some(Authorization::Authorized {
                provider_ref: self.id,
            }),
            "requires_payment_method" | "canceled" => {
                let code = self
                    .last_payment_error
                    .as_ref()
                    .and_then(|e| e["decline_code"].as_str().or(e["code"].as_str()))
                    .unwrap_or(&self.status)
                    .to_owned();
                Some(Authorization::Declined {
                    provider_ref: Some(self.id),
                    code,
                })
            }
            status => WaitingFor::of(status).map(|waiting| Authorization::Waiting {
                provider_ref: self.id,
                status: waiting,
            }),
        }
    }
}

/// What one authorization sends. Repeats must send exactly the same fields with the same key.
pub struct AuthorizeRequest<'a> {
    pub idempotency_key: &'a str,
    pub order_id: uuid::Uuid,
    pub amount: i64,
    pub currency: &'a str,
    pub payment_method: &'a str,
    /// Ask for a hold that several captures can draw on, the last one final (Stripe's multicapture).
    pub multicapture: bool,
    /// The customer is not there (a re-authorization after a lapsed hold): Stripe's `off_session=true`, so a bank
    /// that wants the customer to authenticate declines (`authentication_required`) instead of waiting for them.
    pub off_session: bool,
}

impl Provider {
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(3))
            .build()?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
        })
    }

    /// Places a hold (`capture_method=manual`, `confirm=true`).
    pub async fn authorize(&self, request: &AuthorizeRequest<'_>) -> Result<Authorization, ProviderError> {
        let order_id = request.order_id.to_string();
        let form = [
            ("amount", request.amount.to_string()),
            ("currency", request.currency.to_ascii_lowercase()),
            ("payment_method", request.payment_method.to_owned()),
            ("capture_method", "manual".to_owned()),
            ("confirm", "true".to_owned()),
            ("metadata[order_id]", order_id),
        ]
        .into_iter()
        .chain(request.multicapture.then(|| {
            (
                "payment_method_options[card][request_multicapture]",
                "if_available".to_owned(),
            )
        }))
        .chain(request.off_session.then(|| ("off_session", "true".to_owned())))
        .collect::<Vec<_>>();
        match self
            .post("/v1/payment_intents", request.idempotency_key, &form)
            .await
        {
            Ok(body) => {
                let intent: Intent = parse(body)?;
                let status = intent.status.clone();
                match intent.verdict() {
                    // A new intent is declined with a 402 (below), never answered 200 in such a status.
                    Some(Authorization::Declined { .. }) | None => Err(ProviderError::Rejected {
                        code: "unexpected_status".to_owned(),
                        message: format!("the new intent is {status}"),
                        intent_status: Some(status),
                    }),
                    Some(verdict) => Ok(verdict),
                }
            }
            Err(Failure::Card { code, intent_id }) => Ok(Authorization::Declined {
                provider_ref: intent_id,
                code,
            }),
            Err(Failure::Provider(e)) => Err(e),
        }
    }

    /// Asks where an undecided authorization stands now (`GET /v1/payment_intents/{id}`): the customer or the
    /// bank may have settled it since its first answer, which a repeat of the create would only replay.
    pub async fn retrieve_authorization(&self, provider_ref: &str) -> Result<Authorization, ProviderError> {
        let body = self
            .get(&format!("/v1/payment_intents/{provider_ref}"), &[])
            .await?;
        let intent: Intent = parse(body)?;
        let status = intent.status.clone();
        intent.verdict().ok_or_else(|| ProviderError::Rejected {
            code: "unexpected_status".to_owned(),
            message: format!("the intent is {status}"),
            intent_status: Some(status),
        })
    }

    pub async fn capture(&self, provider_ref: &str, idempotency_key: &str) -> Result<(), ProviderError> {
        self.intent_action(
            &format!("/v1/payment_intents/{provider_ref}/capture"),
            idempotency_key,
            &[],
        )
        .await
    }

    /// Captures `amount` of a multicapture hold; the final capture releases whatever the hold has left.
    pub async fn capture_part(
        &self,
        provider_ref: &str,
        idempotency_key: &str,
        amount: i64,
        final_capture: bool,
    ) -> Result<(), ProviderError> {
        let form = [
            ("amount_to_capture", amount.to_string()),
            ("final_capture", final_capture.to_string()),
        ];
        self.intent_action(
            &format!("/v1/payment_intents/{provider_ref}/capture"),
            idempotency_key,
            &form,
        )
        .await
    }

    /// Voids an uncaptured hold.
    pub async fn void(&self, provider_ref: &str, idempotency_key: &str) -> Result<(), ProviderError> {
        self.intent_action(
            &format!("/v1/payment_intents/{provider_ref}/cancel"),
            idempotency_key,
            &[],
        )
        .await
    }

    pub async fn refund(&self, provider_ref: &str, idempotency_key: &str) -> Result<(), ProviderError> {
        let form = [("payment_intent", provider_ref.to_owned())];
        self.intent_action("/v1/refunds", idempotency_key, &form).await
    }

    /// Refunds `amount` of the intent's captured money; the provider's refund id.
    pub async fn refund_part(
        &self,
        provider_ref: &str,
        idempotency_key: &str,
        amount: i64,
        reason: &str,
    ) -> Result<String, ProviderError> {
        let form = [
            ("payment_intent", provider_ref.to_owned()),
            ("amount", amount.to_string()),
            ("reason", reason.to_owned()),
        ];
        let body = match self.post("/v1/refunds", idempotency_key, &form).await {
            Ok(body) => body,
            Err(Failure::Provider(e)) => return Err(e),
            Err(Failure::Card { code, .. }) => {
                return Err(ProviderError::Rejected {
                    code,
                    message: "card error".to_owned(),
                    intent_status: None,
                });
            }
        };
        body["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Transient("the refund's answer has no id".to_owned()))
    }

    /// When the intent's hold lapses, as its charge says (`payment_method_details.card.capture_before`, read with
    /// `expand[]=latest_charge`); none if the intent has no charge (not authorized) or its charge does not say.
    pub async fn capture_before(
        &self,
        provider_ref: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, ProviderError> {
        let body = self
            .get(
                &format!("/v1/payment_intents/{provider_ref}"),
                &[("expand[]", "latest_charge")],
            )
            .await?;
        Ok(
            body["latest_charge"]["payment_method_details"]["card"]["capture_before"]
                .as_i64()
                .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0)),
        )
    }

    /// `GET path`: the answer's body, or the provider's error (a failure to reach it or read it is transient).
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ProviderError> {
        let url = format!("{}{path}", self.base_url);
        let response = self
            .http
            .get(&url)
            .query(query)
            .send()
            .await
            .map_err(|e| ProviderError::Transient(format!("GET {path}: {e}")))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| ProviderError::Transient(format!("GET {path}: reading the answer: {e}")))?;
        if !status.is_success() {
            if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                return Err(ProviderError::Transient(format!("GET {path}: {status}")));
            }
            let error = &body["error"];
            return Err(ProviderError::Rejected {
                code: error["code"].as_str().unwrap_or("unknown").to_owned(),
                message: error["message"].as_str().unwrap_or("").to_owned(),
                intent_status: None,
            });
        }
        Ok(body)
    }

    async fn intent_action(
        &self,
        path: &str,
        key: &str,
        form: &[(&str, String)],
    ) -> Result<(), ProviderError> {
        match self.post(path, key, form).await {
            Ok(_) => Ok(()),
            Err(Failure::Provider(e)) => Err(e),
            Err(Failure::Card { code, .. }) => Err(ProviderError::Rejected {
                code,
                message: "card error".to_owned(),
                intent_status: None,
            }),
        }
    }

    async fn post(&self, path: &str, key: &str, form: &[(&str, String)]) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base_url);
        let response = self
            .http
            .post(&url)
            .header("Idempotency-Key", key)
            .form(form)
            .send()
            .await
            .map_err(|e| Failure::Provider(ProviderError::Transient(format!("POST {path}: {e}"))))?;
        let status = response.status();
        // A body that cannot be read means the answer was lost on the way: the outcome is unknown.
        let body: Value = response.json().await.map_err(|e| {
            Failure::Provider(ProviderError::Transient(format!(
                "POST {path}: reading the answer: {e}"
            )))
        })?;
        if status.is_success() {
            return Ok(body);
        }
        let error = &body["error"];
        let code = error["code"].as_str().unwrap_or("unknown").to_owned();
        if status.is_server_error() || status.as_u16() == 409 || status.as_u16() == 429 {
            return Err(Failure::Provider(ProviderError::Transient(format!(
                "POST {path}: {status} {code}"
            ))));
        }
        if status.as_u16() == 402 || error["type"] == "card_error" {
            let intent_id = error["payment_intent"]["id"].as_str().map(str::to_owned);
            return Err(Failure::Card { code, intent_id });
        }
        Err(Failure::Provider(ProviderError::Rejected {
            code,
            message: error["message"].as_str().unwrap_or("").to_owned(),
            intent_status: error["payment_intent"]["status"].as_str().map(str::to_owned),
        }))
    }
}

enum Failure {
    Card { code: String, intent_id: Option<String> },
    Provider(ProviderError),
}

fn parse<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, ProviderError> {
    serde_json::from_value(body).map_err(|e| ProviderError::Transient(format!("unexpected answer: {e}")))
}
