//! The Captcha Stage endpoints (`/api/v3/stages/captcha/`) and their wire
//! format, over the generic transport ([`crate::authentik::Client`]): kube-rs's
//! `Api<K>` for this kind.
//!
//! The traps of the wire format (the rest is derived from [`FIELDS`]):
//! - thresholds stored as NaN/infinity come back as `null`: read as NaN so the
//!   plan shows a difference and an apply repairs it; never sent;
//! - `flow_set` and `pk` are never sent (`flow_set` is an error before 2025.12,
//!   `pk` is ignored);
//! - a field the server does not know is not sent, because a write's fields
//!   come cut to what the server knows ([`StageFields::sendable`]) and the
//!   body sends them as they are;
//! - `request_content_type` is `None` when the server does not report it;
//! - PUT keeps omitted fields, so a write sends every field to converge;
//! - a create whose answer was lost is looked up by name before it is sent
//!   again ([`Client::create`]).

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::{FIELDS, LiveStage, StageFields};
use crate::authentik::transport::{Call, Created, List};
use crate::authentik::{ApiError, Client};
use crate::kinds::field;
use crate::kinds::{UsedBy, Written};
use crate::secret::{ExposeSecret, PrivateKey};

/// The list of captcha stages, as the observer names its route.
pub(crate) const LIST: List = List {
    path: "stages/captcha/",
    route: "/api/v3/stages/captcha/",
};
/// Route patterns of one stage and of its `used_by`.
pub(crate) const ROUTE_ONE: &str = "/api/v3/stages/captcha/{uuid}/";
pub(crate) const ROUTE_USED_BY: &str = "/api/v3/stages/captcha/{uuid}/used_by/";

/// Entries of one `used_by` answer beyond which it is deemed broken: a stage
/// in ten thousand flows is not a captcha stage anyone prunes.
const MAX_USED_BY: usize = 10_000;

/// What to write to a captcha stage: every managed field the server knows and
/// the private key.
pub struct StageWrite<'a> {
    /// Sent as they are: cut to what the server knows first
    /// ([`StageFields::sendable`], as the planner cuts a plan's writes), or a
    /// field the server does not know goes on the wire.
    pub fields: &'a StageFields,
    pub private_key: &'a PrivateKey,
}

/// One captcha stage as authentik's `CaptchaStage` schema reports it: `pk`
/// and every field of the table, read by type.
#[derive(Debug)]
pub(crate) struct WireStage(pub(crate) LiveStage);

impl<'de> Deserialize<'de> for WireStage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let map = serde_json::Map::<String, Value>::deserialize(d)?;
        let uuid = match map.get("pk") {
            Some(Value::String(pk)) => Uuid::parse_str(pk).map_err(D::Error::custom)?,
            Some(_) => return Err(D::Error::custom("field `pk` is not a uuid")),
            None => return Err(D::Error::custom("missing field `pk`")),
        };
        let fields = field::from_json(&FIELDS, &map).map_err(D::Error::custom)?;
        Ok(WireStage(LiveStage { uuid, fields }))
    }
}

/// The request body for POST and PUT: every field the write holds (so the
/// fields the plan compared) and the private key. This is the one place a
/// private key is exposed for the wire.
pub(crate) fn write_body(write: &StageWrite<'_>) -> Result<Value, ApiError> {
    let mut body =
        field::to_json(&FIELDS, write.fields).map_err(|refused| ApiError::InvalidValue {
            field: refused.field,
            value: refused.value,
        })?;
    body.insert(
        "private_key".to_owned(),
        Value::from(write.private_key.expose_secret()),
    );
    Ok(Value::Object(body))
}

/// A plan's write of a captcha stage: a create (`uuid` `None`) or an update,
/// and what it made. A captcha stage cannot be written without its key.
pub(crate) async fn write(
    client: &Client,
    uuid: Option<Uuid>,
    fields: &StageFields,
    private_key: Option<&PrivateKey>,
) -> Result<Written, ApiError> {
    let Some(private_key) = private_key else {
        return Err(ApiError::ClientSetup {
            reason: "a captcha stage is written with its private key, and this write has none"
                .into(),
        });
    };
    let request = StageWrite {
        fields,
        private_key,
    };
    let stages = Stages::new(client);
    let (live, secret_confirmed) = match uuid {
        None => stages.create_reporting(&request).await?,
        Some(uuid) => (stages.update(uuid, &request).await?, true),
    };
    Ok(Written {
        uuid: live.uuid,
        name: live.fields.name,
        secret_confirmed,
    })
}

/// The captcha stage endpoints of one authentik. Cheap to make and to clone.
#[derive(Clone, Debug)]
pub struct Stages {
    client: Client,
}

impl Stages {
    pub fn new(client: &Client) -> Stages {
        Stages {
            client: client.clone(),
        }
    }

    /// Every captcha stage (pages of 100, see [`Client::list_every_page`]).
    pub async fn list(&self) -> Result<Vec<LiveStage>, ApiError> {
        let stages: Vec<WireStage> = self
            .client
            .list_every_page(LIST, None, |s: &WireStage| s.0.uuid)
            .await?;
        Ok(stages.into_iter().map(|s| s.0).collect())
    }

    /// `POST` a new stage. A create whose answer was lost (broken connection,
    /// 5xx, authentik's empty 405) is not sent again blindly: the name is
    /// looked up first and the stage returned if the first attempt did create it.
    pub async fn create(&self, write: &StageWrite<'_>) -> Result<LiveStage, ApiError> {
        self.create_reporting(write).await.map(|(live, _)| live)
    }

    /// [`Self::create`], saying whether the stage is known to hold the key
    /// that was sent: a stage found by name after a lost answer may be one
    /// someone else created meanwhile, with another key.
    pub(crate) async fn create_reporting(
        &self,
        write: &StageWrite<'_>,
    ) -> Result<(LiveStage, bool), ApiError> {
        self.client.never_repeat([write.private_key]);
        let body = write_body(write)?;
        let name = write.fields.name.trim();
        Ok(
            match self.client.create::<WireStage>(LIST, name, &body).await? {
                Created::Confirmed(stage) => (stage.0, true),
                Created::FoundByName(stage) => (stage.0, false),
            },
        )
    }

    /// `PUT` every managed field and the private key (PUT keeps omitted
    /// optional fields, so everything is sent to converge).
    pub async fn update(&self, uuid: Uuid, write: &StageWrite<'_>) -> Result<LiveStage, ApiError> {
        self.client.never_repeat([write.private_key]);
        let body = write_body(write)?;
        let call = Call {
            method: Method::PUT,
            route: ROUTE_ONE,
            url: self.client.endpoint(&format!("stages/captcha/{uuid}/"))?,
            body: Some(&body),
        };
        let stage: WireStage = self.client.send(&call, Some(uuid)).await?;
        Ok(stage.0)
    }

    /// `GET .../{uuid}/used_by/`: everything a delete of the stage would
    /// cascade to or null (flows, bindings, identification stages). An empty
    /// list means nothing uses it. 404 is [`ApiError::StageNotFound`].
    pub async fn used_by(&self, uuid: Uuid) -> Result<Vec<UsedBy>, ApiError> {
        let call = Call {
            method: Method::GET,
            route: ROUTE_USED_BY,
            url: self
                .client
                .endpoint(&format!("stages/captcha/{uuid}/used_by/"))?,
            body: None,
        };
        let users: Vec<UsedBy> = self.client.send(&call, Some(uuid)).await?;
        if users.len() > MAX_USED_BY {
            return Err(ApiError::UnexpectedResponse {
                status: 200,
                excerpt: format!("used_by lists {} entries", users.len()),
            });
        }
        Ok(users)
    }

    /// `DELETE .../{uuid}/`: 204 whatever uses the stage (authentik cascades
    /// bindings and nulls embedding stages: ask [`Self::used_by`] first). A
    /// stage already gone is [`ApiError::StageNotFound`].
    pub async fn delete(&self, uuid: Uuid) -> Result<(), ApiError> {
        let call = Call {
            method: Method::DELETE,
            route: ROUTE_ONE,
            url: self.client.endpoint(&format!("stages/captcha/{uuid}/"))?,
            body: None,
        };
        self.client.send_without_answer(&call, Some(uuid)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::{Capabilities, ServerVersion};
    use crate::kinds::captcha::DEFAULT_REQUEST_CONTENT_TYPE;
    use crate::secret::SecretString;

    fn caps(y: u32, m: u32) -> Capabilities {
        Capabilities::for_version(ServerVersion::new(y, m, 0))
    }

    #[test]
    fn body_has_every_known_field_and_the_key_but_never_pk_or_flow_set() {
        let fields = StageFields::with_defaults("login", "site");
        let key = SecretString::from("k".to_owned());
        let old = write_body(&StageWrite {
            fields: &fields.clone().sendable(caps(2025, 12)),
            private_key: &key,
        })
        .unwrap();
        let obj = old.as_object().unwrap();
        assert_eq!(obj.len(), 9);
        assert_eq!(obj["private_key"], "k");
        assert!(!obj.contains_key("request_content_type"));
        assert!(!obj.contains_key("pk") && !obj.contains_key("flow_set"));
        let new = write_body(&StageWrite {
            fields: &fields.clone().sendable(caps(2026, 8)),
            private_key: &key,
        })
        .unwrap();
        assert_eq!(new["request_content_type"], DEFAULT_REQUEST_CONTENT_TYPE);
    }

    #[test]
    fn non_finite_thresholds_are_refused() {
        let key = SecretString::from("k".to_owned());
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let fields = StageFields {
                score_max_threshold: bad,
                ..StageFields::with_defaults("a", "b")
            };
            let err = write_body(&StageWrite {
                fields: &fields,
                private_key: &key,
            })
            .unwrap_err();
            assert!(matches!(
                err,
                ApiError::InvalidValue {
                    field: "score_max_threshold",
                    ..
                }
            ));
        }
    }

    #[test]
    fn null_thresholds_read_as_nan_and_absent_content_type_as_none() {
        let WireStage(live) = serde_json::from_value(serde_json::json!({
            "pk": "db44783d-b6a4-4fc0-bae4-2a08e5151f2e", "name": " a ", "public_key": "p",
            "score_min_threshold": null, "score_max_threshold": 1.0, "flow_set": []
        }))
        .unwrap();
        assert!(live.fields.score_min_threshold.is_nan());
        assert_eq!(live.fields.name, "a");
        assert_eq!(live.fields.request_content_type, None);
        assert_eq!(live.fields.js_url, crate::kinds::captcha::DEFAULT_JS_URL);
    }

    #[test]
    fn an_answer_without_pk_or_with_a_wrong_type_is_refused() {
        let err = serde_json::from_value::<WireStage>(serde_json::json!({"name": "a"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `pk`"), "{err}");
        let err = serde_json::from_value::<WireStage>(serde_json::json!({
            "pk": "db44783d-b6a4-4fc0-bae4-2a08e5151f2e", "name": 7, "public_key": "p"
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("field `name` is a number"), "{err}");
    }
}
