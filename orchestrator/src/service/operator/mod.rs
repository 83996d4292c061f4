//! The operator gRPC service: status, cluster membership, topology, apps, volumes, VMs,
//! operations, reports, readiness and the audit log. Reads are served from this node's
//! applied state; writes go through [`Node::write`] (forwarded to the leader when
//! needed). This module admits callers and routes each call to the module of its
//! concept; every state in a reply is an enum (`crate::wire` converts them). Never:
//! put a state in a reply as text, or decide on a request by matching its text.

mod cluster;
mod inventory;
mod ops;
mod records;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use security::Access;

use crate::node::Node;
use crate::pb::operator_server::Operator;
use crate::pb::*;
use crate::service::auth::{admit, audited};

pub struct OperatorService {
    pub node: Arc<Node>,
}

pub(crate) fn actor(a: &str) -> Result<String, Status> {
    let a = a.trim();
    if a.is_empty() {
        return Err(Status::invalid_argument(
            "the request names no actor: say who is acting (e.g. alice@ops)",
        ));
    }
    Ok(a.to_string())
}

impl OperatorService {
    /// Admit a read (any operator role; nodes and agents are refused).
    pub(super) async fn read<T>(&self, req: &Request<T>, what: &str) -> Result<(), Status> {
        admit(&self.node, req, Access::Read, what, "")
            .await
            .map(drop)
    }

    /// Admit a call: the actor for the audit log (see [`admit`]); without TLS, the name
    /// the request claims, which a mutating call must give.
    /// `claimed` is None for calls whose request names no actor (membership).
    pub(super) async fn admit<T>(
        &self,
        req: &Request<T>,
        access: Access,
        what: &str,
        claimed: Option<&str>,
    ) -> Result<String, Status> {
        let a = admit(&self.node, req, access, what, claimed.unwrap_or_default()).await?;
        match (access, claimed) {
            (Access::Read, _) => Ok(a),
            _ if self.node.security.tls.is_some() => Ok(a),
            (_, None) => Ok("operator (no TLS)".into()),
            (_, Some(_)) => actor(&a),
        }
    }

    /// A mutating call: admitted (see [`Self::admit`]) with the actor its request
    /// claims, then `body` with the request and the actor, whose refusal by the state
    /// machine is audited (see [`audited`]).
    pub(super) async fn guarded<T: Claims, R, Fut>(
        &self,
        access: Access,
        what: &str,
        req: Request<T>,
        body: impl FnOnce(T, String) -> Fut,
    ) -> Result<R, Status>
    where
        Fut: std::future::Future<Output = Result<R, Status>>,
    {
        let claimed = req.get_ref().claimed().map(str::to_owned);
        let actor = self.admit(&req, access, what, claimed.as_deref()).await?;
        let r = body(req.into_inner(), actor.clone()).await;
        audited(&self.node, &actor, what, r).await
    }
}

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        cluster::status(self, req).await
    }

    async fn init_cluster(
        &self,
        req: Request<InitClusterRequest>,
    ) -> Result<Response<InitClusterReply>, Status> {
        cluster::init_cluster(self, req).await
    }

    async fn add_node(
        &self,
        req: Request<AddNodeRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        cluster::add_node(self, req).await
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        cluster::remove_node(self, req).await
    }

    async fn force_membership(
        &self,
        req: Request<ForceMembershipRequest>,
    ) -> Result<Response<ForceMembershipReply>, Status> {
        cluster::force_membership(self, req).await
    }

    async fn apply_topology(
        &self,
        req: Request<ApplyTopologyRequest>,
    ) -> Result<Response<ApplyTopologyReply>, Status> {
        records::apply_topology(self, req).await
    }

    async fn get_topology(
        &self,
        req: Request<GetTopologyRequest>,
    ) -> Result<Response<GetTopologyReply>, Status> {
        records::get_topology(self, req).await
    }

    async fn audit_list(
        &self,
        req: Request<AuditListRequest>,
    ) -> Result<Response<AuditListReply>, Status> {
        records::audit_list(self, req).await
    }

    async fn audit_verify(
        &self,
        req: Request<AuditVerifyRequest>,
    ) -> Result<Response<AuditVerifyReply>, Status> {
        records::audit_verify(self, req).await
    }

    async fn note(&self, req: Request<NoteRequest>) -> Result<Response<WriteReply>, Status> {
        records::note(self, req).await
    }

    async fn list_apps(
        &self,
        req: Request<ListAppsRequest>,
    ) -> Result<Response<ListAppsReply>, Status> {
        inventory::list_apps(self, req).await
    }

    async fn list_volumes(
        &self,
        req: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesReply>, Status> {
        inventory::list_volumes(self, req).await
    }

    async fn list_hosts(
        &self,
        req: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsReply>, Status> {
        inventory::list_hosts(self, req).await
    }

    async fn list_vms(
        &self,
        req: Request<ListVmsRequest>,
    ) -> Result<Response<ListVmsReply>, Status> {
        inventory::list_vms(self, req).await
    }

    async fn vm_action(
        &self,
        req: Request<VmActionRequest>,
    ) -> Result<Response<VmActionReply>, Status> {
        inventory::vm_action(self, req).await
    }

    async fn start_operation(
        &self,
        req: Request<StartOperationRequest>,
    ) -> Result<Response<StartOperationReply>, Status> {
        ops::start_operation(self, req).await
    }

    async fn get_operation(
        &self,
        req: Request<GetOperationRequest>,
    ) -> Result<Response<OperationReply>, Status> {
        ops::get_operation(self, req).await
    }

    async fn list_operations(
        &self,
        req: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsReply>, Status> {
        ops::list_operations(self, req).await
    }

    async fn approve_operation(
        &self,
        req: Request<ApproveOperationRequest>,
    ) -> Result<Response<WriteReply>, Status> {
        ops::approve_operation(self, req).await
    }

    async fn recover_site(
        &self,
        req: Request<RecoverSiteRequest>,
    ) -> Result<Response<RecoverSiteReply>, Status> {
        ops::recover_site(self, req).await
    }

    async fn get_report(
        &self,
        req: Request<GetReportRequest>,
    ) -> Result<Response<GetReportReply>, Status> {
        ops::get_report(self, req).await
    }

    async fn drill_schedules(
        &self,
        req: Request<DrillSchedulesRequest>,
    ) -> Result<Response<DrillSchedulesReply>, Status> {
        ops::drill_schedules(self, req).await
    }

    async fn readiness(
        &self,
        req: Request<ReadinessRequest>,
    ) -> Result<Response<ReadinessReply>, Status> {
        ops::readiness(self, req).await
    }
}

/// The actor a mutating request claims (`actor`), or None for the calls whose request
/// names none (membership: the node's own identity acts).
pub(super) trait Claims {
    fn claimed(&self) -> Option<&str>;
}

macro_rules! claims {
    (actor: $($t:ty),+) => {
        $(impl Claims for $t {
            fn claimed(&self) -> Option<&str> {
                Some(&self.actor)
            }
        })+
    };
    (none: $($t:ty),+) => {
        $(impl Claims for $t {
            fn claimed(&self) -> Option<&str> {
                None
            }
        })+
    };
}

claims!(actor: VmActionRequest, ApproveOperationRequest, RecoverSiteRequest, ApplyTopologyRequest, NoteRequest);
claims!(none: InitClusterRequest, AddNodeRequest, RemoveNodeRequest);
