//! One shard: an OS thread that owns its calls, their sockets and their timers, and runs to
//! completion. The thread is the glue between a sans-IO [`ShardCore`] and an I/O [`Driver`]:
//!
//! wait (the driver) → completions into the core → commands → timers → flush → publish.
//!
//! Completions come before timers, so silence fill never fires for a stream whose packet is
//! already waiting. Nothing here is shared with other threads except the command queue
//! (lock-free crossbeam channel, drained once per turn) and published atomics. A packet never
//! leaves the thread that received it.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::api::CallEvent;
use crate::engine::ShardStats;
use crate::engine::core::ShardCore;
use crate::engine::driver::{Driver, IoDriverChoice, Waker};
use crate::engine::epoll::EpollDriver;
use crate::engine::ratelimit::RateLimitConfig;
use crate::engine::snapshot::ShardTotals;
use crate::engine::uring::UringDriver;

pub(crate) use crate::engine::core::{CallSockets, Command};

/// What a shard thread needs to start.
pub(crate) struct ShardSetup {
    pub id: usize,
    pub driver: IoDriverChoice,
    /// `EngineConfig::connect_twins`.
    pub connect_twins: bool,
    pub waker: Waker,
    pub commands: Receiver<Command>,
    pub events_out: Sender<CallEvent>,
    pub stats: Arc<ShardStats>,
    pub published: Arc<std::sync::Mutex<ShardTotals>>,
    pub rate_limit: RateLimitConfig,
    /// The process's CPU limit, which the busy share is counted against.
    pub cpu: Arc<crate::engine::cpu_limit::CpuBudget>,
}

/// The shard thread's body: open the driver (on this thread: io_uring's single-issuer ring
/// belongs to the thread that made it), report which one to `started`, then run.
pub(crate) fn run(setup: ShardSetup, started: mpsc::Sender<std::io::Result<&'static str>>) {
    let mut core = ShardCore::new(
        setup.id,
        setup.events_out,
        setup.stats,
        setup.published,
        setup.rate_limit,
        Instant::now(),
    );
    core.set_connect_twins(setup.connect_twins);
    core.set_cpu_budget(setup.cpu);
    let id = setup.id;
    let uring = match setup.driver {
        IoDriverChoice::Epoll => None,
        IoDriverChoice::IoUring | IoDriverChoice::Auto => {
            match UringDriver::new(setup.waker.clone()) {
                Ok(d) => Some(d),
                Err(e) if setup.driver == IoDriverChoice::Auto => {
                    tracing::warn!(
                        shard = id,
                        error = %e,
                        "io_uring unavailable (kernel.io_uring_disabled, a container's default \
                         seccomp profile, or a kernel before 6.1); falling back to epoll, which \
                         costs more CPU per packet (deploy/README.md: Seccomp and io_uring)"
                    );
                    None
                }
                Err(e) => {
                    let _ = started.send(Err(std::io::Error::new(
                        e.kind(),
                        format!("io_uring driver (--io-driver io_uring): {e}"),
                    )));
                    return;
                }
            }
        }
    };
    if let Some(d) = uring {
        let _ = started.send(Ok(d.name()));
        return run_loop(core, d, setup.commands);
    }
    match EpollDriver::new(setup.waker) {
        Ok(d) => {
            let _ = started.send(Ok(d.name()));
            run_loop(core, d, setup.commands)
        }
        Err(e) => {
            let _ = started.send(Err(e));
        }
    }
}

fn run_loop<D: Driver>(mut core: ShardCore, mut driver: D, commands: Receiver<Command>) {
    core.measure_thread_demand();
    loop {
        if let Err(e) = driver.wait(core.next_wake()) {
            tracing::error!(shard = core.id(), error = %e, "I/O wait failed; shard stops");
            return;
        }
        // One clock read per loop turn (per batch, not per packet).
        let now = Instant::now();
        driver.deliver(now, &mut core);
        let mut running = true;
        while let Ok(cmd) = commands.try_recv() {
            if !core.on_command(now, cmd, driver.io()) {
                running = false;
                break;
            }
        }
        if core.timers_due(now) {
            // Datagrams the kernel holds for us go to their calls before any fill is made.
            driver.collect(now, &mut core);
        }
        core.run_timers(now, driver.io());
        driver.flush();
        if !running {
            driver.finish();
            return;
        }
        core.end_turn(now, now.elapsed(), &driver.counters());
    }
}
