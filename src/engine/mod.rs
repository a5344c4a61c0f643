//! The steps every strategy shares, each with its undo: [`launch`] (start and health-check), [`flip`] (write,
//! `nginx -t`, reload, confirm, restore), [`retire`] (unlist, drain, stop), [`verify`] (the window after the
//! switch), [`recover`] (finish or undo what a killed run left), and [`hooks`]. A strategy is a short sequence of
//! them; [`Engine::run`] wraps one operation with its history event and its hooks.

pub mod flip;
pub mod hooks;
pub mod launch;
pub mod recover;
pub mod retire;
pub mod settle;
pub mod verify;

use std::time::Duration;

use anyhow::Result;

use crate::config::Config;
use crate::exit;
use crate::host::Host;
use crate::journal::{Event, Journal, OpKind, Outcome, State, Store};
use crate::lock::{self, Lock, Scope};
use crate::output::Progress;
use crate::plan::{self, Drift, Snapshot};
use crate::strategy::Strategy;
use crate::upstream::Renderer;
use hooks::{Hook, HookEnv};

/// One run of cutover against one app: the config, the host, the journal, the progress lines.
pub struct Engine<'h> {
    pub cfg: &'h Config,
    pub host: &'h dyn Host,
    pub journal: Journal<'h>,
    pub progress: Progress,
    pub renderer: Renderer,
    /// How long to wait for the host-wide nginx lock (`--lock-wait`).
    pub lock_wait: Option<Duration>,
    /// Set when this run cleaned up after a killed one ([`Engine::recover`]).
    pub recovered: bool,
    /// How long nothing served during this operation (all at once), for its history event.
    pub downtime: Option<Duration>,
}

/// Which way an operation moved traffic, for the hooks that follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// Nothing moved (a canary step, a failure undone before the switch).
    Nothing,
    /// To a newer release (a deploy, a promote to 100 %).
    Forward,
    /// Back to an older release (a rollback, an abort).
    Back,
}

/// What an operation is, for its history event and its hooks.
#[derive(Debug, Clone)]
pub struct OpMeta {
    pub kind: OpKind,
    pub release: String,
    pub strategy: Option<Strategy>,
}

/// How an operation that did not fail ended: its value, which way traffic moved, the outcome history records.
pub struct Done<T> {
    pub value: T,
    pub moved: Moved,
    pub outcome: Outcome,
}

impl<T> Done<T> {
    pub fn forward(value: T) -> Done<T> {
        Done { value, moved: Moved::Forward, outcome: Outcome::Ok }
    }
    pub fn back(value: T) -> Done<T> {
        Done { value, moved: Moved::Back, outcome: Outcome::Ok }
    }
    pub fn with(value: T, moved: Moved, outcome: Outcome) -> Done<T> {
        Done { value, moved, outcome }
    }
}

impl<'h> Engine<'h> {
    pub fn new(cfg: &'h Config, host: &'h dyn Host, store: Store, progress: Progress) -> Result<Engine<'h>> {
        let journal = Journal::open(store, cfg.app.name.as_str(), host)?;
        Ok(Engine {
            cfg,
            host,
            journal,
            progress,
            renderer: Renderer::new(cfg)?,
            lock_wait: None,
            recovered: false,
            downtime: None,
        })
    }

    /// The start of every command that changes something: take the app's lock, finish or undo what a killed run
    /// left, and report drift. Drift that would be overwritten (a hand-edited upstream file, state gone while the
    /// upstream says a release is live) stops the command unless `force` (exit 8).
    pub fn open(
        cfg: &'h Config,
        host: &'h dyn Host,
        store: Store,
        lock_wait: Option<Duration>,
        force: bool,
        by: &str,
        progress: Progress,
    ) -> Result<(Lock, Engine<'h>)> {
        store.ensure()?;
        let (lock, stale) = lock::acquire(&store.lock_path(), Scope::App, lock_wait)?;
        if let Some(h) = stale {
            progress.warn(format!("took over the lock left by {h}: that process is gone"));
        }
        let mut eng = Engine::new(cfg, host, store, progress)?;
        eng.lock_wait = lock_wait;
        eng.recover(by)?;
        let snap = Snapshot::take(host, cfg, eng.state(), None)?;
        let rendered = eng.renderer.render(cfg, eng.state()).ok();
        let drift = plan::reconcile(cfg, eng.state(), &snap, rendered.as_deref());
        for d in &drift {
            eng.progress.warn(format!("drift: {d}"));
        }
        if let Some(d) = drift.iter().find(|d| d.blocks()) {
            if !force {
                let msg = match d {
                    Drift::UpstreamEdited { path } => format!(
                        "the upstream file {path} was changed outside cutover; look at `cutover render --diff`, then \
                         run again with --force to replace it"
                    ),
                    other => other.to_string(),
                };
                return Err(exit::refused(msg));
            }
        }
        Ok((lock, eng))
    }

    pub fn state(&self) -> &State {
        self.journal.state()
    }

    /// The live release's name, if any.
    pub fn live_release(&self) -> Option<String> {
        self.state().live.as_ref().map(|d| d.release.clone())
    }

    /// Run one operation: `body` does the work; this records its history event and fires the hooks that
    /// follow it (`after_switch` when traffic moved forward, `after_rollback` whenever it went back to an older
    /// release, `on_failure` on every failure).
    pub fn run<T>(&mut self, meta: &OpMeta, body: impl FnOnce(&mut Engine<'h>) -> Result<Done<T>>) -> Result<T> {
        let from = self.live_release();
        let result = body(self);
        let env = |this: &Engine, error: Option<String>| HookEnv {
            release: meta.release.clone(),
            previous: from.clone().unwrap_or_default(),
            kind: meta.kind,
            strategy: meta.strategy,
            ports: this.state().live.iter().flat_map(|d| d.ports()).collect(),
            error,
        };
        match &result {
            Ok(done) => {
                let hook = match done.moved {
                    Moved::Forward => Some(Hook::AfterSwitch),
                    Moved::Back => Some(Hook::AfterRollback),
                    Moved::Nothing => None,
                };
                if let Some(h) = hook {
                    if let Err(e) = hooks::fire(self, h, &env(self, None)) {
                        self.progress.warn(format!("{e:#} (the {} itself succeeded)", meta.kind));
                    }
                }
            }
            Err(e) => {
                if exit::returned_of(e).is_some() {
                    if let Err(h) = hooks::fire(self, Hook::AfterRollback, &env(self, None)) {
                        self.progress.warn(format!("{h:#}"));
                    }
                }
                if let Err(h) = hooks::fire(self, Hook::OnFailure, &env(self, Some(format!("{e:#}")))) {
                    self.progress.warn(format!("{h:#}"));
                }
            }
        }
        let ok = result.as_ref().map(|d| d.outcome).unwrap_or(Outcome::Ok);
        let mut event = Event::of(meta.kind, &meta.release, ok, &result);
        event.from = from;
        event.strategy = meta.strategy;
        event.steps = self.progress.steps.clone();
        event.total_ms = crate::output::ms(self.progress.elapsed());
        event.downtime_ms = self.downtime.map(crate::output::ms);
        if let Err(e) = self.journal.append_history(&event) {
            self.progress.warn(format!("could not record history: {e:#}"));
        }
        result.map(|d| d.value)
    }

    /// Begin an operation in the journal (before its first side effect).
    pub fn begin(&mut self, kind: OpKind, release: &str, strategy: Option<Strategy>) -> Result<()> {
        let before = self.host.nginx().read_upstream()?;
        self.journal.begin(kind, release, strategy, before)
    }
}
