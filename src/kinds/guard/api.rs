//! The endpoints of what a captcha stage guards, over the generic transport:
//! flows (`/flows/instances/`, looked up by slug), flow stage bindings
//! (`/flows/bindings/`) and identification stages (`/stages/identification/`).
//!
//! Fewest calls: one paged list of every binding, one look-up per flow slug
//! the manifests name (a flow's detail route takes the slug), one paged list
//! of identification stages; one write per changed guard.
//!
//! Traps of the wire format (CONTRACT.md, recorded from 2025.12.4):
//! - a binding's `target` is the flow's uuid, never its slug;
//! - the two evaluation flags are checked from the request alone: a write of
//!   a binding always sends every field of [`FIELDS`] together;
//! - an order or option change is a PATCH of the same binding (its pk, and
//!   the policies bound to it, survive), never a delete and a create;
//! - an identification stage's PATCH of `captcha_stage` alone is 400: its
//!   live `user_fields` and `sources` go along.

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{BindingFields, FIELDS, GuardWrite, LiveBinding, LiveFlow, LiveIdentificationStage};
use crate::authentik::transport::{Call, List};
use crate::authentik::wire::Page;
use crate::authentik::{ApiError, Client};
use crate::kinds::Written;
use crate::kinds::field;

/// Every flow stage binding.
pub(crate) const BINDINGS: List = List {
    path: "flows/bindings/",
    route: "/api/v3/flows/bindings/",
};
pub(crate) const ROUTE_BINDING: &str = "/api/v3/flows/bindings/{uuid}/";
/// Every identification stage.
pub(crate) const IDENTIFICATION_STAGES: List = List {
    path: "stages/identification/",
    route: "/api/v3/stages/identification/",
};
pub(crate) const ROUTE_IDENTIFICATION_STAGE: &str = "/api/v3/stages/identification/{uuid}/";
pub(crate) const ROUTE_FLOW: &str = "/api/v3/flows/instances/{slug}/";
/// Every flow.
pub(crate) const FLOWS: List = List {
    path: "flows/instances/",
    route: "/api/v3/flows/instances/",
};

/// One binding as authentik's `FlowStageBinding` reports it.
#[derive(Debug)]
struct WireBinding(LiveBinding);

impl<'de> Deserialize<'de> for WireBinding {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let map = serde_json::Map::<String, Value>::deserialize(d)?;
        let uuid_of = |key: &str| match map.get(key) {
            Some(Value::String(s)) => Uuid::parse_str(s).map_err(D::Error::custom),
            _ => Err(D::Error::custom(format!("field `{key}` is not a uuid"))),
        };
        let fields: BindingFields = field::from_json(&FIELDS, &map).map_err(D::Error::custom)?;
        let flow = uuid_of("target")?;
        // The stage's flow_set names the flows it is bound into, with slugs.
        let flow_slug = map
            .get("stage_obj")
            .and_then(|s| s.get("flow_set"))
            .and_then(Value::as_array)
            .and_then(|flows| {
                flows.iter().find(|f| {
                    f.get("pk").and_then(Value::as_str) == Some(flow.to_string().as_str())
                })
            })
            .and_then(|f| f.get("slug"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(WireBinding(LiveBinding {
            uuid: uuid_of("pk")?,
            flow,
            flow_slug,
            stage: uuid_of("stage")?,
            fields,
        }))
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireFlow {
    pk: Uuid,
    slug: String,
}

#[derive(Debug, Deserialize)]
struct WireIdentificationStage {
    pk: Uuid,
    name: String,
    #[serde(default)]
    captcha_stage: Option<Uuid>,
    #[serde(default)]
    user_fields: Vec<String>,
    #[serde(default)]
    sources: Vec<Value>,
}

impl From<WireFlow> for LiveFlow {
    fn from(w: WireFlow) -> Self {
        LiveFlow {
            uuid: w.pk,
            slug: w.slug,
        }
    }
}

impl From<WireIdentificationStage> for LiveIdentificationStage {
    fn from(w: WireIdentificationStage) -> Self {
        LiveIdentificationStage {
            uuid: w.pk,
            name: w.name,
            captcha_stage: w.captcha_stage,
            user_fields: w.user_fields,
            sources: w.sources,
        }
    }
}

/// The body of a binding's write: every field, the two evaluation flags
/// always together.
fn binding_body(flow: Uuid, stage: Uuid, fields: &BindingFields) -> Result<Value, ApiError> {
    let mut body = field::to_json(&FIELDS, fields).map_err(|refused| ApiError::InvalidValue {
        field: refused.field,
        value: refused.value,
    })?;
    body.insert("target".into(), json!(flow));
    body.insert("stage".into(), json!(stage));
    Ok(Value::Object(body))
}

/// A plan's write of a guard: a binding created (`uuid` `None`) or PATCHed,
/// or an identification stage's embedded captcha set; what it made.
pub(crate) async fn write(
    client: &Client,
    uuid: Option<Uuid>,
    write: &GuardWrite,
) -> Result<Written, ApiError> {
    let guards = Guards::new(client);
    let missing = || ApiError::ClientSetup {
        reason: "the guard's captcha stage was not created".into(),
    };
    match (write, uuid) {
        (GuardWrite::Binding(b), uuid) => {
            let stage = b.stage.ok_or_else(missing)?;
            let made = match uuid {
                None => guards.bind(b.flow_uuid, stage, &b.fields).await?,
                Some(uuid) => {
                    guards
                        .update_binding(uuid, b.flow_uuid, stage, &b.fields)
                        .await?
                }
            };
            Ok(Written {
                uuid: made.uuid,
                name: b.flow.clone(),
                secret_confirmed: false,
            })
        }
        (GuardWrite::Embedding(e), _) => {
            if e.captcha_stage.is_some() && e.captcha_uuid.is_none() {
                return Err(missing());
            }
            let made = guards.embed(&e.live, e.captcha_uuid).await?;
            Ok(Written {
                uuid: made.uuid,
                name: made.name,
                secret_confirmed: false,
            })
        }
    }
}

/// The guard endpoints of one authentik. Cheap to make and to clone.
#[derive(Clone, Debug)]
pub struct Guards {
    client: Client,
}

impl Guards {
    pub fn new(client: &Client) -> Guards {
        Guards {
            client: client.clone(),
        }
    }

    /// Every flow stage binding, of every stage (one paged list).
    pub async fn bindings(&self) -> Result<Vec<LiveBinding>, ApiError> {
        let bindings: Vec<WireBinding> = self
            .client
            .list_every_page(BINDINGS, None, |b: &WireBinding| b.0.uuid)
            .await?;
        Ok(bindings.into_iter().map(|b| b.0).collect())
    }

    /// Every identification stage (one paged list).
    pub async fn identification_stages(&self) -> Result<Vec<LiveIdentificationStage>, ApiError> {
        let stages: Vec<WireIdentificationStage> = self
            .client
            .list_every_page(
                IDENTIFICATION_STAGES,
                None,
                |s: &WireIdentificationStage| s.pk,
            )
            .await?;
        Ok(stages.into_iter().map(Into::into).collect())
    }

    /// The flows whose slugs are `slugs` (a slug missing from the answer has
    /// no flow), with the fewest calls: the first page of the flow list
    /// (which says how many pages there are), then either the other pages or
    /// one look-up per slug not on it, whichever is fewer.
    pub async fn flows(
        &self,
        slugs: &std::collections::BTreeSet<&str>,
    ) -> Result<std::collections::BTreeMap<String, LiveFlow>, ApiError> {
        let mut found = std::collections::BTreeMap::new();
        if slugs.is_empty() {
            return Ok(found);
        }
        if slugs.len() == 1 {
            self.look_up(slugs.iter().copied(), &mut found).await?;
            return Ok(found);
        }
        let first: Page<WireFlow> = self.client.list_page(FLOWS, 1).await?;
        let pages = crate::authentik::transport::page_count(&first.pagination).unwrap_or(u64::MAX);
        let keep = |found: &mut std::collections::BTreeMap<String, LiveFlow>,
                    flows: Vec<WireFlow>| {
            for f in flows
                .into_iter()
                .filter(|f| slugs.contains(f.slug.as_str()))
            {
                found.insert(f.slug.clone(), f.into());
            }
        };
        let on_first: std::collections::BTreeSet<String> =
            first.results.iter().map(|f| f.slug.clone()).collect();
        let missing = slugs.iter().filter(|s| !on_first.contains(**s)).count() as u64;
        if pages.saturating_sub(1) <= missing {
            let all: Vec<WireFlow> = self
                .client
                .list_every_page(FLOWS, Some(first), |f: &WireFlow| f.pk)
                .await?;
            keep(&mut found, all);
        } else {
            keep(&mut found, first.results);
            let not_on_first = slugs.iter().copied().filter(|s| !on_first.contains(*s));
            self.look_up(not_on_first, &mut found).await?;
        }
        Ok(found)
    }

    /// One look-up per slug, each flow found kept in `found`.
    async fn look_up<'s>(
        &self,
        slugs: impl Iterator<Item = &'s str>,
        found: &mut std::collections::BTreeMap<String, LiveFlow>,
    ) -> Result<(), ApiError> {
        for slug in slugs {
            if let Some(flow) = self.flow(slug).await? {
                found.insert(flow.slug.clone(), flow);
            }
        }
        Ok(())
    }

    /// The flow whose slug is `slug`; `None` when there is none (authentik's
    /// JSON 404 "No Flow matches the given query.").
    pub async fn flow(&self, slug: &str) -> Result<Option<LiveFlow>, ApiError> {
        let mut url = self.client.endpoint("flows/instances/")?;
        url.path_segments_mut()
            .map_err(|()| ApiError::ClientSetup {
                reason: "the authentik URL cannot take a path".into(),
            })?
            .pop_if_empty()
            .push(slug)
            .push("");
        match self.client.get_json::<WireFlow>(url, ROUTE_FLOW).await {
            Ok(flow) => Ok(Some(flow.into())),
            // A JSON 404 on a route that is not a stage's: no such flow (an
            // HTML 404 would be a wrong URL, and stays an error).
            Err(ApiError::UnexpectedResponse { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST` a new binding of `stage` into `flow`.
    pub async fn bind(
        &self,
        flow: Uuid,
        stage: Uuid,
        fields: &BindingFields,
    ) -> Result<LiveBinding, ApiError> {
        let body = binding_body(flow, stage, fields)?;
        let call = Call {
            method: Method::POST,
            route: BINDINGS.route,
            url: self.client.endpoint(BINDINGS.path)?,
            body: Some(&body),
        };
        let binding: WireBinding = self.client.send(&call, None).await?;
        Ok(binding.0)
    }

    /// `PATCH` every field of the binding `uuid` (same pk: the policies bound
    /// to it survive).
    pub async fn update_binding(
        &self,
        uuid: Uuid,
        flow: Uuid,
        stage: Uuid,
        fields: &BindingFields,
    ) -> Result<LiveBinding, ApiError> {
        let body = binding_body(flow, stage, fields)?;
        let call = Call {
            method: Method::PATCH,
            route: ROUTE_BINDING,
            url: self.client.endpoint(&format!("flows/bindings/{uuid}/"))?,
            body: Some(&body),
        };
        // `None`: a 404 is authentik's own words about the binding, not a
        // captcha stage's "does not exist".
        let binding: WireBinding = self.client.send(&call, None).await?;
        Ok(binding.0)
    }

    /// `DELETE` the binding `uuid`.
    pub async fn unbind(&self, uuid: Uuid) -> Result<(), ApiError> {
        let call = Call {
            method: Method::DELETE,
            route: ROUTE_BINDING,
            url: self.client.endpoint(&format!("flows/bindings/{uuid}/"))?,
            body: None,
        };
        self.client.send_without_answer(&call, Some(uuid)).await
    }

    /// Sets the captcha `stage` embeds (`None`: none), carrying its live
    /// `user_fields` and `sources` along, as authentik's serializer demands.
    pub async fn embed(
        &self,
        stage: &LiveIdentificationStage,
        captcha: Option<Uuid>,
    ) -> Result<LiveIdentificationStage, ApiError> {
        let body = json!({
            "captcha_stage": captcha,
            "user_fields": stage.user_fields,
            "sources": stage.sources,
        });
        let call = Call {
            method: Method::PATCH,
            route: ROUTE_IDENTIFICATION_STAGE,
            url: self
                .client
                .endpoint(&format!("stages/identification/{}/", stage.uuid))?,
            body: Some(&body),
        };
        let answer: WireIdentificationStage = self.client.send(&call, None).await?;
        Ok(answer.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binding_body_carries_both_evaluation_flags_and_the_flows_uuid() {
        let fields = BindingFields {
            order: 15,
            evaluate_on_plan: true,
            re_evaluate_policies: false,
            policy_engine_mode: "all".into(),
            invalid_response_action: "restart".into(),
        };
        let (flow, stage) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let body = binding_body(flow, stage, &fields).unwrap();
        assert_eq!(
            body,
            json!({
                "target": flow, "stage": stage, "order": 15,
                "evaluate_on_plan": true, "re_evaluate_policies": false,
                "policy_engine_mode": "all", "invalid_response_action": "restart",
            })
        );
    }

    #[test]
    fn a_binding_answer_is_read_by_the_table() {
        let WireBinding(b) = serde_json::from_value(json!({
            "pk": "ea9fde30-c4e9-467f-9700-30429a8f5eec",
            "target": "43ab8974-50e8-491b-b36b-637a32865687",
            "stage": "41c0253b-4ca7-401e-94a1-5491a1c2395c",
            "stage_obj": {}, "order": 10, "evaluate_on_plan": false,
            "re_evaluate_policies": true, "policy_engine_mode": "any",
            "invalid_response_action": "retry",
        }))
        .unwrap();
        assert_eq!(b.fields.order, 10);
        assert_eq!(b.fields.policy_engine_mode, "any");
        let err = serde_json::from_value::<WireBinding>(json!({
            "pk": "ea9fde30-c4e9-467f-9700-30429a8f5eec", "target": "slug",
            "stage": "41c0253b-4ca7-401e-94a1-5491a1c2395c", "order": 1,
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("invalid"), "{err}");
    }
}
