//! One run of a saga, from wherever its log says it stands: steps forward up to and
//! through the pivot, compensation in reverse after a failure before (or of) it, and
//! forward recovery after it. The run holds the saga's lease and renews it; every write
//! is fenced by it, so a run whose lease was taken over stops at its next write, and a
//! run that cannot renew stops its current step before the lease can run out.

use std::{sync::Arc, time::Duration};

use actix::Addr;
use serde_json::Value;

use super::{
    definition::{Definition, StepContext, StepError},
    log::{state, step_state, LogError, Next, Record, SagaLog, StepRecord},
    Fault, Progress, Reached, Saga, SagaConfig, SagaEvent,
};

/// How a run ended.
#[derive(Debug, Clone)]
pub enum Ended {
    /// Every step done.
    Completed,
    /// Compensated after this error.
    Compensated(String),
    /// Another server owns the saga now, or the log could not be written for longer
    /// than the lease: it will be resumed from the log.
    Abandoned(String),
}

/// Everything a run needs.
pub(super) struct Run {
    pub id: String,
    pub owner: Arc<str>,
    pub log: SagaLog,
    pub definition: Arc<dyn Definition>,
    pub config: SagaConfig,
    pub supervisor: Addr<Saga>,
    pub fault: Option<Arc<Fault>>,
}

/// The next wait before retrying after `attempt` failed attempts: exponential from
/// `initial`, capped at `max`, with "equal jitter" (half fixed, half random) so that
/// retries of many sagas spread out.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
    let base = exp.min(max);
    let half = base / 2;
    let random = getrandom::u32().unwrap_or(u32::MAX / 2);
    half + half.mul_f64(f64::from(random) / f64::from(u32::MAX))
}

impl Run {
    /// Runs the saga until it ends or this server stops owning it.
    pub async fn execute(self) -> Ended {
        let renew = async {
            let period = self.config.lease / 3;
            let mut last_renewed = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(period).await;
                match self
                    .log
                    .write(&self.id, &self.owner, self.config.lease, Record::Renew)
                    .await
                {
                    Ok(()) => last_renewed = tokio::time::Instant::now(),
                    Err(LogError::LeaseLost) => return "another server took the saga over".into(),
                    Err(LogError::Db(error)) => {
                        // Stop before the lease can run out: past it, another server may
                        // claim the saga while this one is still inside a step.
                        if last_renewed.elapsed() + period >= self.config.lease {
                            return format!("could not renew the lease: {error}");
                        }
                    }
                }
            }
        };
        tokio::select! {
            ended = self.drive() => ended,
            reason = renew => Ended::Abandoned(reason),
        }
    }

    fn notify(&self, event: SagaEvent) {
        self.supervisor.do_send(Progress {
            id: self.id.clone(),
            event,
        });
    }

    async fn write(&self, record: Record<'_>) -> Result<(), Ended> {
        // A write that fails for a database error is retried: the lease renewal gives up
        // (and so ends this run) when the database stays unreachable too long.
        let mut attempt = 0;
        loop {
            match self
                .log
                .write(&self.id, &self.owner, self.config.lease, record)
                .await
            {
                Ok(()) => return Ok(()),
                Err(LogError::LeaseLost) => {
                    return Err(Ended::Abandoned("another server took the saga over".into()))
                }
                Err(LogError::Db(error)) => {
                    attempt += 1;
                    tracing::warn!(saga = %self.id, %error, "saga log write failed; retrying");
                    tokio::time::sleep(backoff(
                        attempt,
                        self.config.retry_initial,
                        self.config.retry_max,
                    ))
                    .await;
                }
            }
        }
    }

    fn context(&self, step: usize, input: &Value, attempt: u32) -> StepContext {
        StepContext {
            saga_id: self.id.clone(),
            step,
            input: input.clone(),
            attempt,
        }
    }

    async fn run_step(&self, ctx: StepContext) -> Result<Value, StepError> {
        let name = self.definition.steps()[ctx.step].name;
        if let Some(fault) = &self.fault {
            fault.before(name).await?;
        }
        match tokio::time::timeout(self.config.step_timeout, self.definition.run(ctx)).await {
            Ok(result) => result,
            Err(_) => Err(StepError::timed_out(self.config.step_timeout)),
        }
    }

    /// Records (once) that the saga is stuck, or that it no longer is.
    async fn stuck(
        &self,
        stuck: &mut bool,
        now: bool,
        what: &str,
        error: &str,
    ) -> Result<(), Ended> {
        if *stuck == now {
            return Ok(());
        }
        *stuck = now;
        self.write(Record::Stuck(now)).await?;
        if now {
            tracing::error!(
                saga = %self.id,
                saga_type = self.definition.saga_type(),
                %what,
                %error,
                "saga stuck: still retrying; see /admin/sagas?state=stuck"
            );
        }
        self.notify(SagaEvent::Stuck(now));
        Ok(())
    }

    async fn drive(&self) -> Ended {
        match self.drive_inner().await {
            Ok(ended) | Err(ended) => ended,
        }
    }

    async fn drive_inner(&self) -> Result<Ended, Ended> {
        let loaded = loop {
            match self.log.load(&self.id).await {
                Ok(Some(loaded)) => break loaded,
                Ok(None) => return Err(Ended::Abandoned("the saga is not in the log".into())),
                Err(error) => {
                    tracing::warn!(saga = %self.id, %error, "could not read the saga log");
                    tokio::time::sleep(self.config.retry_max.min(Duration::from_secs(1))).await;
                }
            }
        };
        let (saga, mut steps) = loaded;
        let input: Value = serde_json::from_str(&saga.input).unwrap_or(Value::Null);
        let mut stuck = saga.stuck;
        let pivot = self.definition.pivot();
        if steps.len() != self.definition.steps().len() {
            return Err(Ended::Abandoned(format!(
                "the log has {} steps, the definition {}",
                steps.len(),
                self.definition.steps().len()
            )));
        }
        let forward = match saga.state.as_str() {
            state::RUNNING => self.forward(&input, &mut steps, &mut stuck).await?,
            state::COMPENSATING => Err(saga.last_error.clone().unwrap_or_default()),
            other => return Ok(finished(other, saga.last_error)),
        };
        let error = match forward {
            Ok(last) => {
                match &last {
                    Some((done, output)) => {
                        self.write(Record::Advance {
                            done: *done,
                            output,
                            next: Next::Complete,
                        })
                        .await?
                    }
                    None => self.write(Record::State(state::COMPLETED, None)).await?,
                }
                self.notify(SagaEvent::Reached(Reached::Completed));
                return Ok(Ended::Completed);
            }
            Err(error) => error,
        };
        if saga.state == state::RUNNING {
            self.write(Record::State(state::COMPENSATING, Some(&error)))
                .await?;
        }
        // Compensate in reverse what ran or may have run; never what did not.
        for index in (0..steps.len()).rev() {
            let ran = matches!(
                steps[index].state.as_str(),
                step_state::DONE | step_state::STARTED | step_state::COMPENSATING
            );
            if !ran || index >= pivot && steps[index].state == step_state::DONE {
                continue;
            }
            self.compensate(&input, &mut steps[index], &mut stuck)
                .await?;
        }
        self.write(Record::State(state::COMPENSATED, Some(&error)))
            .await?;
        self.notify(SagaEvent::Reached(Reached::Compensated(error.clone())));
        Ok(Ended::Compensated(error))
    }

    /// Runs the steps that are not done: `Ok` with the last step's success when it is
    /// not recorded yet (it goes with the completion), `Err(error)` when the saga must
    /// compensate. A step's success is recorded together with the start of the next one
    /// (one commit per step); the pivot's is recorded at once, before anyone is told.
    async fn forward(
        &self,
        input: &Value,
        steps: &mut [StepRecord],
        stuck: &mut bool,
    ) -> Result<Result<Option<(usize, String)>, String>, Ended> {
        let mut carried: Option<(usize, String)> = None;
        let pivot = self.definition.pivot();
        if steps
            .get(pivot)
            .is_some_and(|s| s.state == step_state::DONE)
        {
            self.notify(SagaEvent::Reached(Reached::Pivot));
        }
        for (index, step) in steps.iter_mut().enumerate() {
            if step.state == step_state::DONE {
                continue;
            }
            let name = step.name.clone();
            let mut attempt = 0u32;
            let output = loop {
                attempt += 1;
                match carried.take() {
                    Some((done, output)) => {
                        self.write(Record::Advance {
                            done,
                            output: &output,
                            next: Next::Start(index),
                        })
                        .await?
                    }
                    None => self.write(Record::StepStarted(index)).await?,
                }
                step.state = step_state::STARTED.into();
                let result = self.run_step(self.context(index, input, attempt)).await;
                let error = match result {
                    Ok(output) => break output,
                    Err(error) => error,
                };
                let message = format!("{name}: {error}");
                self.write(Record::StepFailed {
                    step: index,
                    error: &message,
                    definite: error.definite && index <= pivot,
                })
                .await?;
                self.notify(SagaEvent::Retry);
                if index < pivot || (index == pivot && error.definite) {
                    if error.definite {
                        step.state = step_state::FAILED.into();
                        return Ok(Err(message));
                    }
                    if attempt >= self.config.pre_pivot_attempts {
                        return Ok(Err(message));
                    }
                } else if index == pivot && attempt >= self.config.pre_pivot_attempts {
                    // An unknown outcome of the pivot: it is idempotent, so it was tried
                    // again; now ask whether it took effect before giving up on it.
                    match self
                        .definition
                        .pivot_took_effect(self.context(index, input, attempt))
                        .await
                    {
                        Ok(true) => break Value::Null,
                        Ok(false) => {
                            step.state = step_state::FAILED.into();
                            self.write(Record::StepFailed {
                                step: index,
                                error: &message,
                                definite: true,
                            })
                            .await?;
                            return Ok(Err(message));
                        }
                        Err(check) => {
                            tracing::warn!(saga = %self.id, %check, "cannot tell whether the pivot took effect yet");
                        }
                    }
                }
                if attempt >= self.config.stuck_after {
                    self.stuck(stuck, true, &name, &message).await?;
                }
                tracing::warn!(saga = %self.id, step = %name, attempt, %error, "saga step failed; retrying");
                tokio::time::sleep(backoff(
                    attempt,
                    self.config.retry_initial,
                    self.config.retry_max,
                ))
                .await;
            };
            let output = output.to_string();
            step.state = step_state::DONE.into();
            self.stuck(stuck, false, &name, "").await?;
            if index == pivot {
                self.write(Record::StepDone(index, &output)).await?;
                self.notify(SagaEvent::Reached(Reached::Pivot));
            } else {
                carried = Some((index, output));
            }
        }
        Ok(Ok(carried))
    }

    /// Undoes one step, retrying until it is undone.
    async fn compensate(
        &self,
        input: &Value,
        step: &mut StepRecord,
        stuck: &mut bool,
    ) -> Result<(), Ended> {
        let index = step.step_index as usize;
        if !self.definition.steps()[index].compensable {
            self.write(Record::Compensated(index)).await?;
            step.state = step_state::COMPENSATED.into();
            return Ok(());
        }
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.write(Record::CompensationStarted(index)).await?;
            self.notify(SagaEvent::Compensation);
            let ctx = self.context(index, input, attempt);
            let result = match tokio::time::timeout(
                self.config.step_timeout,
                self.definition.compensate(ctx),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(StepError::timed_out(self.config.step_timeout)),
            };
            match result {
                Ok(()) => break,
                Err(error) => {
                    let message = format!("undoing {}: {error}", step.name);
                    self.write(Record::CompensationFailed(index, &message))
                        .await?;
                    self.notify(SagaEvent::Retry);
                    if attempt >= self.config.stuck_after {
                        self.stuck(stuck, true, &step.name, &message).await?;
                    }
                    tokio::time::sleep(backoff(
                        attempt,
                        self.config.retry_initial,
                        self.config.retry_max,
                    ))
                    .await;
                }
            }
        }
        self.write(Record::Compensated(index)).await?;
        step.state = step_state::COMPENSATED.into();
        self.stuck(stuck, false, &step.name, "").await
    }
}

fn finished(state: &str, error: Option<String>) -> Ended {
    match state {
        state::COMPENSATED => Ended::Compensated(error.unwrap_or_default()),
        _ => Ended::Completed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 1..40 {
            let wait = backoff(attempt, initial, max);
            let base = (initial * 2u32.pow((attempt - 1).min(20))).min(max);
            assert!(
                wait >= base / 2 && wait <= base,
                "attempt {attempt}: {wait:?}"
            );
        }
        let waits: std::collections::HashSet<_> =
            (0..20).map(|_| backoff(10, initial, max)).collect();
        assert!(waits.len() > 1, "no jitter");
    }
}
