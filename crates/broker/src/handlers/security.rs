//! The security admin APIs: CreateAcls, DescribeAcls, DeleteAcls (KIP-140)
//! and DescribeUserScramCredentials, AlterUserScramCredentials (KIP-554).
//! ACLs and credentials live in the metadata store, so every broker applies
//! a change as soon as it sees the new image. Without an authorizer the ACL
//! APIs answer SECURITY_DISABLED, as Kafka's do, and the SCRAM APIs refuse
//! the anonymous principal.

use kafka_protocol::messages::{
    self as m, AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse, DescribeUserScramCredentialsRequest,
    DescribeUserScramCredentialsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use strata_auth::acl::{AclBinding, AclFilter, Operation, PatternType, Permission, ResourceType};
use strata_auth::scram::{Mechanism, ScramCredential, MAX_ITERATIONS, MIN_ITERATIONS};
use strata_cluster::{Fence, MetaOp};

use super::authorize::cluster_allowed;
use super::{sb, RequestContext};
use crate::state::Broker;

async fn commit(broker: &Broker, ops: Vec<MetaOp>) -> Result<(), (i16, String)> {
    if ops.is_empty() {
        return Ok(());
    }
    let session = broker.metadata().session();
    let fence = Fence::Broker(session.broker_id(), session.broker_epoch());
    let revision = broker.metadata().commit(fence, ops).await.map_err(|e| {
        let e = crate::error::store_error(e);
        (e.code.code(), e.message)
    })?;
    // Answer once this broker's image has it, so a client's next request
    // here sees the change.
    let mut rx = broker.metadata().subscribe();
    strata_cluster::store::wait_for_revision(&mut rx, revision, std::time::Duration::from_secs(5))
        .await;
    Ok(())
}

fn binding_from(c: &m::create_acls_request::AclCreation) -> Result<AclBinding, String> {
    let b = AclBinding {
        resource_type: ResourceType::from_code(c.resource_type)
            .ok_or_else(|| format!("unknown resource type {}", c.resource_type))?,
        resource_name: c.resource_name.to_string(),
        pattern_type: PatternType::from_code(c.resource_pattern_type)
            .ok_or_else(|| format!("unknown pattern type {}", c.resource_pattern_type))?,
        principal: c.principal.to_string(),
        // One spelling per address, as connections are seen (IPv4-mapped
        // IPv6 addresses as IPv4).
        host: match c.host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.to_canonical().to_string(),
            Err(_) => c.host.to_string(),
        },
        operation: Operation::from_code(c.operation)
            .ok_or_else(|| format!("unknown operation {}", c.operation))?,
        permission: Permission::from_code(c.permission_type)
            .ok_or_else(|| format!("unknown permission {}", c.permission_type))?,
    };
    b.validate()?;
    Ok(b)
}

#[allow(clippy::too_many_arguments)]
fn filter_from(
    resource_type: i8,
    name: Option<&StrBytes>,
    pattern_type: i8,
    principal: Option<&StrBytes>,
    host: Option<&StrBytes>,
    operation: i8,
    permission: i8,
) -> Result<AclFilter, String> {
    Ok(AclFilter {
        resource_type: ResourceType::from_code(resource_type)
            .ok_or_else(|| format!("unknown resource type {resource_type}"))?,
        resource_name: name.map(|s| s.to_string()),
        pattern_type: PatternType::from_code(pattern_type)
            .ok_or_else(|| format!("unknown pattern type {pattern_type}"))?,
        principal: principal.map(|s| s.to_string()),
        host: host.map(|s| s.to_string()),
        operation: Operation::from_code(operation)
            .ok_or_else(|| format!("unknown operation {operation}"))?,
        permission: Permission::from_code(permission)
            .ok_or_else(|| format!("unknown permission {permission}"))?,
    })
}

/// What the ACL APIs answer without an authorizer (Kafka's SECURITY_DISABLED).
const NO_AUTHORIZER: &str = "no authorizer is configured: set auth.authorizer = true";

fn security_disabled_creation() -> m::create_acls_response::AclCreationResult {
    let mut out = m::create_acls_response::AclCreationResult::default();
    out.error_code = ResponseError::SecurityDisabled.code();
    out.error_message = Some(sb(NO_AUTHORIZER));
    out
}

/// CreateAcls: needs ALTER on the cluster.
pub(crate) async fn create_acls(
    broker: &Broker,
    ctx: &RequestContext,
    r: CreateAclsRequest,
) -> CreateAclsResponse {
    let mut resp = CreateAclsResponse::default();
    if !broker.authorizer().enabled() {
        resp.results = r
            .creations
            .iter()
            .map(|_| security_disabled_creation())
            .collect();
        return resp;
    }
    let allowed = cluster_allowed(broker, ctx, Operation::Alter);
    let mut ops = Vec::new();
    let mut results = Vec::new();
    for c in &r.creations {
        let mut out = m::create_acls_response::AclCreationResult::default();
        if !allowed {
            out.error_code = ResponseError::ClusterAuthorizationFailed.code();
        } else {
            match binding_from(c) {
                // The same binding twice in one request is stored once.
                Ok(b)
                    if ops
                        .iter()
                        .any(|o| matches!(o, MetaOp::PutAcl { binding } if *binding == b)) => {}
                Ok(b) => ops.push(MetaOp::PutAcl { binding: b }),
                Err(e) => {
                    out.error_code = ResponseError::InvalidRequest.code();
                    out.error_message = Some(sb(e));
                }
            }
        }
        results.push(out);
    }
    if let Err((code, msg)) = commit(broker, ops).await {
        for out in results.iter_mut().filter(|o| o.error_code == 0) {
            out.error_code = code;
            out.error_message = Some(sb(msg.clone()));
        }
    } else if allowed {
        tracing::info!(principal = %ctx.identity.principal, count = results.iter().filter(|o| o.error_code == 0).count(), "ACLs created");
    }
    resp.results = results;
    resp
}

/// DescribeAcls: needs DESCRIBE on the cluster.
pub(crate) fn describe_acls(
    broker: &Broker,
    ctx: &RequestContext,
    r: DescribeAclsRequest,
) -> DescribeAclsResponse {
    let mut resp = DescribeAclsResponse::default();
    if !broker.authorizer().enabled() {
        resp.error_code = ResponseError::SecurityDisabled.code();
        resp.error_message = Some(sb(NO_AUTHORIZER));
        return resp;
    }
    if !cluster_allowed(broker, ctx, Operation::Describe) {
        resp.error_code = ResponseError::ClusterAuthorizationFailed.code();
        return resp;
    }
    let filter = match filter_from(
        r.resource_type_filter,
        r.resource_name_filter.as_ref(),
        r.pattern_type_filter,
        r.principal_filter.as_ref(),
        r.host_filter.as_ref(),
        r.operation,
        r.permission_type,
    ) {
        Ok(f) => f,
        Err(e) => {
            resp.error_code = ResponseError::InvalidRequest.code();
            resp.error_message = Some(sb(e));
            return resp;
        }
    };
    let img = broker.image();
    let mut by_resource: std::collections::BTreeMap<(i8, String, i8), Vec<&AclBinding>> =
        Default::default();
    for b in img.security.acls.values().filter(|b| filter.matches(b)) {
        by_resource
            .entry((
                b.resource_type.code(),
                b.resource_name.clone(),
                b.pattern_type.code(),
            ))
            .or_default()
            .push(b);
    }
    resp.resources = by_resource
        .into_iter()
        .map(|((rt, name, pt), acls)| {
            let mut res = m::describe_acls_response::DescribeAclsResource::default();
            res.resource_type = rt;
            res.resource_name = sb(name);
            res.pattern_type = pt;
            res.acls = acls
                .into_iter()
                .map(|b| {
                    let mut d = m::describe_acls_response::AclDescription::default();
                    d.principal = sb(b.principal.clone());
                    d.host = sb(b.host.clone());
                    d.operation = b.operation.code();
                    d.permission_type = b.permission.code();
                    d
                })
                .collect();
            res
        })
        .collect();
    resp
}

/// DeleteAcls: needs ALTER on the cluster.
pub(crate) async fn delete_acls(
    broker: &Broker,
    ctx: &RequestContext,
    r: DeleteAclsRequest,
) -> DeleteAclsResponse {
    let mut resp = DeleteAclsResponse::default();
    if !broker.authorizer().enabled() {
        resp.filter_results = r
            .filters
            .iter()
            .map(|_| {
                let mut out = m::delete_acls_response::DeleteAclsFilterResult::default();
                out.error_code = ResponseError::SecurityDisabled.code();
                out.error_message = Some(sb(NO_AUTHORIZER));
                out
            })
            .collect();
        return resp;
    }
    let allowed = cluster_allowed(broker, ctx, Operation::Alter);
    let img = broker.image();
    let mut ops = Vec::new();
    for f in &r.filters {
        let mut out = m::delete_acls_response::DeleteAclsFilterResult::default();
        if !allowed {
            out.error_code = ResponseError::ClusterAuthorizationFailed.code();
            resp.filter_results.push(out);
            continue;
        }
        let filter = match filter_from(
            f.resource_type_filter,
            f.resource_name_filter.as_ref(),
            f.pattern_type_filter,
            f.principal_filter.as_ref(),
            f.host_filter.as_ref(),
            f.operation,
            f.permission_type,
        ) {
            Ok(x) => x,
            Err(e) => {
                out.error_code = ResponseError::InvalidRequest.code();
                out.error_message = Some(sb(e));
                resp.filter_results.push(out);
                continue;
            }
        };
        for b in img.security.acls.values().filter(|b| filter.matches(b)) {
            let mut x = m::delete_acls_response::DeleteAclsMatchingAcl::default();
            x.resource_type = b.resource_type.code();
            x.resource_name = sb(b.resource_name.clone());
            x.pattern_type = b.pattern_type.code();
            x.principal = sb(b.principal.clone());
            x.host = sb(b.host.clone());
            x.operation = b.operation.code();
            x.permission_type = b.permission.code();
            out.matching_acls.push(x);
            ops.push(MetaOp::DeleteAcl { binding: b.clone() });
        }
        resp.filter_results.push(out);
    }
    if let Err((code, msg)) = commit(broker, ops).await {
        for out in resp.filter_results.iter_mut().filter(|o| o.error_code == 0) {
            out.error_code = code;
            out.error_message = Some(sb(msg.clone()));
            out.matching_acls.clear();
        }
    }
    resp
}

/// DescribeUserScramCredentials: needs DESCRIBE on the cluster. Gives
/// mechanisms and iteration counts, never salts or keys.
pub(crate) fn describe_scram(
    broker: &Broker,
    ctx: &RequestContext,
    r: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let mut resp = DescribeUserScramCredentialsResponse::default();
    if !cluster_allowed(broker, ctx, Operation::Describe) {
        resp.error_code = ResponseError::ClusterAuthorizationFailed.code();
        return resp;
    }
    let img = broker.image();
    let users = &img.security.users;
    let names: Vec<String> = match &r.users {
        None => users.keys().cloned().collect(),
        Some(v) if v.is_empty() => users.keys().cloned().collect(),
        Some(v) => v.iter().map(|u| u.name.to_string()).collect(),
    };
    let mut seen = std::collections::HashSet::new();
    for name in names {
        let mut out = m::describe_user_scram_credentials_response::DescribeUserScramCredentialsResult::default();
        out.user = sb(name.clone());
        if !seen.insert(name.clone()) {
            out.error_code = ResponseError::DuplicateResource.code();
            out.error_message = Some(sb(format!("user '{name}' is named twice")));
        } else {
            match users.get(&name) {
                None => {
                    out.error_code = ResponseError::ResourceNotFound.code();
                    out.error_message = Some(sb(format!(
                        "Attempt to describe a user credential that does not exist: {name}"
                    )));
                }
                Some(creds) => {
                    out.credential_infos = creds
                        .values()
                        .map(|c| {
                            let mut i = m::describe_user_scram_credentials_response::CredentialInfo::default();
                            i.mechanism = c.mechanism.code();
                            i.iterations = c.iterations as i32;
                            i
                        })
                        .collect();
                }
            }
        }
        resp.results.push(out);
    }
    resp
}

/// AlterUserScramCredentials: needs ALTER on the cluster. Upsertions carry
/// the salted password the client computed, so the password never travels.
pub(crate) async fn alter_scram(
    broker: &Broker,
    ctx: &RequestContext,
    r: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let mut resp = AlterUserScramCredentialsResponse::default();
    let allowed = cluster_allowed(broker, ctx, Operation::Alter);
    let img = broker.image();
    // Per user: the ops, or the first error.
    let mut per_user: indexmap::IndexMap<String, Result<Vec<MetaOp>, (i16, String)>> =
        Default::default();
    let mut note = |user: &str, op: Result<MetaOp, (i16, String)>| {
        let e = per_user.entry(user.to_string()).or_insert(Ok(Vec::new()));
        match (e.as_mut(), op) {
            (Ok(ops), Ok(op)) => ops.push(op),
            (Ok(_), Err(err)) => *e = Err(err),
            (Err(_), _) => {}
        }
    };
    for d in &r.deletions {
        let user = d.name.to_string();
        let op = if !allowed {
            Err((
                ResponseError::ClusterAuthorizationFailed.code(),
                String::new(),
            ))
        } else {
            match Mechanism::from_code(d.mechanism) {
                None => Err((
                    ResponseError::UnsupportedSaslMechanism.code(),
                    format!("unknown SCRAM mechanism {}", d.mechanism),
                )),
                Some(m) if img.security.credential(&user, m).is_none() => Err((
                    ResponseError::ResourceNotFound.code(),
                    format!("Attempt to delete a user credential that does not exist: {user}"),
                )),
                Some(m) => Ok(MetaOp::DeleteScram {
                    user: user.clone(),
                    mechanism: m,
                }),
            }
        };
        note(&user, op);
    }
    for u in &r.upsertions {
        let user = u.name.to_string();
        let op = if !allowed {
            Err((
                ResponseError::ClusterAuthorizationFailed.code(),
                String::new(),
            ))
        } else if user.is_empty() {
            Err((
                ResponseError::UnacceptableCredential.code(),
                "empty user name".into(),
            ))
        } else {
            match Mechanism::from_code(u.mechanism) {
                None => Err((
                    ResponseError::UnsupportedSaslMechanism.code(),
                    format!("unknown SCRAM mechanism {}", u.mechanism),
                )),
                Some(_) if u.iterations < MIN_ITERATIONS as i32 => Err((
                    ResponseError::UnacceptableCredential.code(),
                    format!(
                        "iterations {} is below the minimum {MIN_ITERATIONS}",
                        u.iterations
                    ),
                )),
                Some(_) if u.iterations > MAX_ITERATIONS as i32 => Err((
                    ResponseError::UnacceptableCredential.code(),
                    format!(
                        "iterations {} is above the maximum {MAX_ITERATIONS}",
                        u.iterations
                    ),
                )),
                Some(_) if u.salt.is_empty() || u.salted_password.is_empty() => Err((
                    ResponseError::UnacceptableCredential.code(),
                    "salt and salted password are required".into(),
                )),
                Some(m) => Ok(MetaOp::PutScram {
                    user: user.clone(),
                    credential: ScramCredential::from_salted_password(
                        m,
                        &u.salted_password,
                        &u.salt,
                        u.iterations as u32,
                    ),
                }),
            }
        };
        note(&user, op);
    }
    for (user, ops) in per_user {
        let mut out =
            m::alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default();
        out.user = sb(user.clone());
        let result = match ops {
            Ok(ops) => commit(broker, ops).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                tracing::info!(principal = %ctx.identity.principal, user, "SCRAM credentials altered")
            }
            Err((code, msg)) => {
                out.error_code = code;
                out.error_message = (!msg.is_empty()).then(|| sb(msg));
            }
        }
        resp.results.push(out);
    }
    resp
}
