//! The operator API's operations (start, read, list, approve), site recovery,
//! reports, drill schedules and readiness: the calls that delegate to
//! `service::operations` and `service::reports`. Never: audit a dry run (it changes
//! nothing).

use security::Access;
use tonic::{Request, Response, Status};

use super::OperatorService;
use crate::pb::*;
use crate::service::auth::audited;
use crate::wire;

pub(super) async fn start_operation(
    svc: &OperatorService,
    req: Request<StartOperationRequest>,
) -> Result<Response<StartOperationReply>, Status> {
    let dry_run = req.get_ref().dry_run;
    let what = "start an operation";
    let actor = svc
        .admit(
            &req,
            if dry_run {
                Access::Read
            } else {
                Access::Operate
            },
            what,
            Some(&req.get_ref().actor),
        )
        .await?;
    let r = async {
        let actor = actor.clone();

        let req = req.into_inner();
        Ok(Response::new(
            crate::service::operations::start(&svc.node, actor, req).await?,
        ))
    }
    .await;
    if dry_run {
        // A plan that cannot be made changed nothing: the caller hears why.
        r
    } else {
        audited(&svc.node, &actor, what, r).await
    }
}

pub(super) async fn get_operation(
    svc: &OperatorService,
    req: Request<GetOperationRequest>,
) -> Result<Response<OperationReply>, Status> {
    svc.read(&req, "read an operation").await?;

    Ok(Response::new(crate::service::operations::get(
        &svc.node,
        &req.into_inner(),
    )?))
}

pub(super) async fn list_operations(
    svc: &OperatorService,
    req: Request<ListOperationsRequest>,
) -> Result<Response<ListOperationsReply>, Status> {
    svc.read(&req, "list operations").await?;

    Ok(Response::new(crate::service::operations::list(
        &svc.node,
        &req.into_inner(),
    )?))
}

pub(super) async fn approve_operation(
    svc: &OperatorService,
    req: Request<ApproveOperationRequest>,
) -> Result<Response<WriteReply>, Status> {
    let what = "approve an operation";
    svc.guarded(Access::Operate, what, req, |req, actor| async move {
        Ok(Response::new(
            crate::service::operations::approve(&svc.node, actor, req).await?,
        ))
    })
    .await
}

pub(super) async fn recover_site(
    svc: &OperatorService,
    req: Request<RecoverSiteRequest>,
) -> Result<Response<RecoverSiteReply>, Status> {
    let what = "recover a site";
    svc.guarded(Access::Operate, what, req, |req, actor| async move {
        Ok(Response::new(
            crate::service::operations::recover_site(&svc.node, actor, req).await?,
        ))
    })
    .await
}

pub(super) async fn get_report(
    svc: &OperatorService,
    req: Request<GetReportRequest>,
) -> Result<Response<GetReportReply>, Status> {
    svc.read(&req, "read a report").await?;

    Ok(Response::new(crate::service::reports::get(
        &svc.node,
        &req.into_inner(),
    )?))
}

pub(super) async fn drill_schedules(
    svc: &OperatorService,
    req: Request<DrillSchedulesRequest>,
) -> Result<Response<DrillSchedulesReply>, Status> {
    svc.read(&req, "read drill schedules").await?;

    let list = crate::schedule::status(&svc.node.state.read().state);
    Ok(Response::new(DrillSchedulesReply {
        schedules: list.iter().map(wire::schedule_to_wire).collect(),
    }))
}

pub(super) async fn readiness(
    svc: &OperatorService,
    req: Request<ReadinessRequest>,
) -> Result<Response<ReadinessReply>, Status> {
    svc.read(&req, "read readiness").await?;

    Ok(Response::new(crate::service::reports::readiness(
        &svc.node,
        &req.into_inner(),
    )?))
}
