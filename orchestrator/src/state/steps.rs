//! An operation's life and its saga log: start one by hand, start and finish the steps
//! of its plan (a step is identified by its place in the plan, [`StepAt`]), finish it;
//! and the reads of the log (the steps of an operation, the operation as operators
//! and reports see it).
//!
//! Never: record a step the plan does not have, or finish a step twice.

use topology::AppId;

use super::{
    Applied, AuditEvent, ClusterState, MAX_REASON_LEN, MAX_STEPS, OpId, OpKind, OpStatus,
    Operation, Outcome, RejectKind, Rejection, Request, Step, StepAt, StepResult, not_found,
    reject, step_key,
};

impl ClusterState {
    pub(super) fn start_operation(
        &mut self,
        req: &Request,
        kind: OpKind,
        apps: &[AppId],
        note: &str,
    ) -> Applied {
        for a in apps {
            if !self.apps.contains(a) {
                return Err(not_found("app", a.as_str()));
            }
        }
        let id = self.operations.last().map_or(1, |(k, _)| k + 1);
        self.operations.insert(
            id,
            Operation {
                id: OpId(id),
                kind,
                apps: apps.to_vec(),
                started_by: req.actor.clone(),
                started_ms: req.at_ms,
                ended_ms: None,
                status: OpStatus::Running,
                note: note.to_string(),
                steps: Vec::new(),
                plan: None,
                lost_ms: None,
                approved: Vec::new(),
            },
        );
        Ok((
            AuditEvent::OpStarted {
                op: OpId(id),
                kind,
                apps: apps.to_vec(),
                note: note.to_string(),
                waves: 0,
                skipped: Vec::new(),
            },
            Outcome::Operation(OpId(id)),
        ))
    }

    pub(super) fn start_step(&mut self, req: &Request, op: OpId, at: &StepAt) -> Applied {
        let rec = self.running_op_ref(op)?;
        let Some(planned) = rec.plan.as_ref().and_then(|p| p.step(at)) else {
            return reject(
                RejectKind::Conflict,
                format!("the plan of {op} has no {at}"),
            );
        };
        let (kind, name) = (planned.kind(), planned.to_string());
        let started = |index: u32, again: bool| AuditEvent::StepStarted {
            op,
            index,
            at: at.clone(),
            kind,
            again,
        };
        let app = at.app().or(planned.app()).cloned();
        if let Some(a) = at.app()
            && !self.apps.contains(a)
        {
            return Err(not_found("app", a.as_str()));
        }
        // A retried commit of a start that was applied: the same step, once.
        if let Some((index, s)) = self.steps_of(op).find(|(_, s)| &s.at == at) {
            if s.result.is_some() {
                return reject(
                    RejectKind::Conflict,
                    format!("{op} step {index} ({name}) already finished"),
                );
            }
            return Ok((started(index, true), Outcome::Step(index)));
        }
        let index = self
            .steps_of(op)
            .next_back()
            .map_or(0, |(i, _)| i.saturating_add(1));
        if index >= MAX_STEPS - 1 {
            return reject(
                RejectKind::Conflict,
                format!("{op} has {MAX_STEPS} steps already"),
            );
        }
        self.op_steps.insert(
            step_key(op, index),
            Step {
                at: at.clone(),
                app,
                kind,
                started_ms: req.at_ms,
                ended_ms: None,
                result: None,
            },
        );
        Ok((started(index, false), Outcome::Step(index)))
    }

    pub(super) fn finish_step(
        &mut self,
        req: &Request,
        op: OpId,
        index: u32,
        result: &StepResult,
    ) -> Applied {
        self.running_op_ref(op)?;
        let step = (index < MAX_STEPS)
            .then(|| self.op_steps.get_mut(&step_key(op, index)))
            .flatten()
            .ok_or_else(|| not_found("step", &format!("{op} #{index}")))?;
        if step.result.is_some() {
            return reject(
                RejectKind::Conflict,
                format!("{op} step {index} already finished"),
            );
        }
        if let StepResult::Done { outcome } = result
            && !outcome.fits(step.kind)
        {
            return reject(
                RejectKind::Invalid,
                format!(
                    "{op} step {index} is a {} step; it cannot end with {outcome:?}",
                    step.kind.label()
                ),
            );
        }
        step.ended_ms = Some(req.at_ms);
        step.result = Some(result.clone());
        // The rendering, cut to an audit entry's size (the step's record keeps it all).
        let detail = crate::records::cut(result.to_string(), MAX_REASON_LEN);
        let event = AuditEvent::StepFinished {
            op,
            index,
            at: step.at.clone(),
            kind: step.kind,
            ok: result.is_done(),
            detail,
        };
        Ok((event, Outcome::Done))
    }

    pub(super) fn finish_operation(
        &mut self,
        req: &Request,
        op: OpId,
        status: OpStatus,
    ) -> Applied {
        if status == OpStatus::Running {
            return reject(
                RejectKind::Invalid,
                "an operation cannot finish with status running",
            );
        }
        let rec = self.running_op(op)?;
        rec.status = status;
        rec.ended_ms = Some(req.at_ms);
        Ok((AuditEvent::OpFinished { op, status }, Outcome::Done))
    }

    /// Steps of `op` in the order they were started, with their index.
    pub fn steps_of(&self, op: OpId) -> impl DoubleEndedIterator<Item = (u32, &Step)> {
        self.op_steps
            .range(step_key(op, 0)..=step_key(op, MAX_STEPS - 1))
            .map(|(k, s)| ((k & 0x00ff_ffff) as u32, s))
    }

    /// An operation with its steps (as operators and reports see it).
    pub fn operation_view(&self, id: u64) -> Option<Operation> {
        let mut o = self.operations.get(&id)?.clone();
        o.steps
            .extend(self.steps_of(OpId(id)).map(|(_, s)| s.clone()));
        Some(o)
    }

    pub(super) fn running_op_ref(&self, op: OpId) -> Result<&Operation, Rejection> {
        let rec = self
            .operations
            .get(&op.0)
            .ok_or_else(|| not_found("operation", &op.to_string()))?;
        if rec.status != OpStatus::Running {
            return reject(
                RejectKind::Conflict,
                format!("{op} already finished ({:?})", rec.status),
            );
        }
        Ok(rec)
    }

    pub(super) fn running_op(&mut self, op: OpId) -> Result<&mut Operation, Rejection> {
        self.running_op_ref(op)?;
        self.operations
            .get_mut(&op.0)
            .ok_or_else(|| not_found("operation", &op.to_string()))
    }
}
