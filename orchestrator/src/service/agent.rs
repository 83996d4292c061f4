//! The agent API. Registration, leases and commands are defined by the agent work;
//! until then every call fails loudly with UNIMPLEMENTED rather than pretending.

use tonic::{Request, Response, Status};

use crate::pb::agent_server::Agent;
use crate::pb::{AgentRegisterReply, AgentRegisterRequest};

pub struct AgentService;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn register(
        &self,
        req: Request<AgentRegisterRequest>,
    ) -> Result<Response<AgentRegisterReply>, Status> {
        Err(Status::unimplemented(format!(
            "host {:?} tried to register, but this orchestrator has no agent support yet",
            req.get_ref().host
        )))
    }
}
