//! Pacing a replay: items are due at their time divided by the speed, counted from where the
//! replay (re)started; pause, play, seek and speed changes move that anchor. A clock tick at
//! least once a second tells the client where replay time is, through quiet stretches too.

use std::sync::Arc;
use std::time::Duration;

use fieldline_store::{Store, StoreError};
use tokio::time::Instant;

use super::source::{Item, Source};
use super::{Place, Request, RequestError, Speed};

const CLOCK_EVERY: Duration = Duration::from_secs(1);

pub enum Output {
    /// A stored item, at its place in the replay.
    Event { place: Place, item: Item },
    /// Replay time now (ms since 1970).
    Clock(i64),
    /// Everything up to `to` has been sent.
    End,
    /// Storage failed; the replay stops.
    Failed(StoreError),
}

enum Step {
    Ready(Output),
    Read,
    Wait(Instant),
    Idle,
}

pub struct Player {
    store: Arc<dyn Store>,
    request: Request,
    source: Source,
    speed: Speed,
    paused: bool,
    /// Replay time `anchor_ts` was due at wall time `anchor_wall`.
    anchor_ts: i64,
    anchor_wall: Instant,
    /// The newest time passed, for `max` (which has no wall clock mapping) and pauses.
    reached_ts: i64,
    /// Items already passed at the newest time: the next one's place index.
    run: Place,
    /// On resume: items up to this place were sent before.
    resume_after: Option<Place>,
    next_clock: Instant,
    finished: bool,
    /// Whether the first chunks are in: pacing starts then, not while they are read.
    begun: bool,
}

impl Player {
    /// A replay from its start, or just after `resume_after` (which must lie in its range).
    pub fn new(
        store: Arc<dyn Store>,
        request: Request,
        resume_after: Option<Place>,
    ) -> Result<Player, RequestError> {
        let start = match resume_after {
            None => request.from_ms,
            Some(p) if (request.from_ms..request.to_ms).contains(&p.ts_ms) => p.ts_ms,
            Some(_) => return Err(RequestError::Seek),
        };
        let source = Source::new(
            &store,
            &request.devices,
            &request.kinds,
            start,
            request.to_ms,
        );
        let now = Instant::now();
        Ok(Player {
            store,
            speed: request.speed,
            request,
            source,
            paused: false,
            anchor_ts: start,
            anchor_wall: now,
            reached_ts: start,
            run: Place {
                ts_ms: start,
                index: 0,
            },
            resume_after,
            next_clock: now,
            finished: false,
            begun: false,
        })
    }

    pub fn request(&self) -> &Request {
        &self.request
    }

    pub fn speed(&self) -> Speed {
        self.speed
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Replay time now.
    pub fn now_ts(&self) -> i64 {
        self.ts_at(Instant::now())
    }

    fn ts_at(&self, now: Instant) -> i64 {
        match self.speed {
            _ if self.paused || self.finished => self.reached_ts,
            Speed::Max => self.reached_ts,
            Speed::Times(s) => {
                let elapsed = now
                    .saturating_duration_since(self.anchor_wall)
                    .as_secs_f64();
                let ts = self.anchor_ts + (elapsed * 1000.0 * s) as i64;
                ts.clamp(self.reached_ts, self.request.to_ms)
            }
        }
    }

    fn anchor(&mut self, ts: i64) {
        self.anchor_ts = ts;
        self.anchor_wall = Instant::now();
        self.reached_ts = ts;
    }

    pub fn pause(&mut self) {
        if !self.paused {
            self.reached_ts = self.now_ts();
            self.paused = true;
        }
    }

    pub fn play(&mut self) {
        if self.paused {
            self.paused = false;
            self.anchor(self.reached_ts);
        }
    }

    pub fn set_speed(&mut self, speed: Speed) {
        let ts = self.now_ts();
        self.speed = speed;
        self.anchor(ts);
    }

    /// Goes on from `ts` (within the range): the next item is the first at or after it.
    pub fn seek(&mut self, ts: i64) -> Result<(), RequestError> {
        if !(self.request.from_ms..=self.request.to_ms).contains(&ts) {
            return Err(RequestError::Seek);
        }
        let r = &self.request;
        self.source = Source::new(&self.store, &r.devices, &r.kinds, ts, r.to_ms);
        self.run = Place {
            ts_ms: ts,
            index: 0,
        };
        self.resume_after = None;
        self.finished = false;
        self.begun = false;
        self.anchor(ts);
        self.next_clock = Instant::now();
        Ok(())
    }

    /// Reads the first chunks, so that pacing, which starts once they are in, starts when
    /// the caller says the replay opens.
    pub async fn prepare(&mut self) -> Result<(), StoreError> {
        self.source.fill().await
    }

    /// The next output, waiting for its time; never returns while paused or after `End`
    /// (until a seek). Safe to cancel.
    pub async fn next(&mut self) -> Output {
        loop {
            match self.step(Instant::now()) {
                Step::Ready(output) => return output,
                Step::Read => {
                    if let Err(e) = self.source.fill().await {
                        self.finished = true;
                        return Output::Failed(e);
                    }
                }
                // Idle time is read-ahead time: a read finished early leaves the wait to the
                // next pass; one that runs past `until` delays the item by one query only.
                Step::Wait(_) if self.source.wants_read_ahead() => {
                    if let Err(e) = self.source.read_ahead().await {
                        self.finished = true;
                        return Output::Failed(e);
                    }
                }
                Step::Wait(until) => tokio::time::sleep_until(until).await,
                Step::Idle => std::future::pending::<()>().await,
            }
        }
    }

    /// The next output if it is due now with nothing to read: for filling a frame.
    pub fn next_ready(&mut self) -> Option<Output> {
        match self.step(Instant::now()) {
            Step::Ready(output) => Some(output),
            _ => None,
        }
    }

    fn step(&mut self, now: Instant) -> Step {
        if self.finished || self.paused {
            return Step::Idle;
        }
        if !self.source.ready() {
            return Step::Read;
        }
        if !self.begun {
            self.begun = true;
            self.anchor_wall = now;
            self.next_clock = now;
        }
        let head = self.source.head().map(|k| k.ts_ms);
        if let (Some(after), Some(ts)) = (self.resume_after, head) {
            if (ts, self.index_of(ts)) <= (after.ts_ms, after.index) {
                self.pass(ts);
                self.source.pop();
                return self.step(now);
            }
            self.resume_after = None;
        }
        // At the end, the clock still runs on to `to`.
        let target = head.unwrap_or(self.request.to_ms);
        if now >= self.next_clock {
            self.next_clock = now + CLOCK_EVERY;
            return Step::Ready(Output::Clock(self.ts_at(now).min(target)));
        }
        if let Some(gap) = self.request.skip_gaps_ms {
            if target - self.ts_at(now) > gap {
                self.anchor(target);
            }
        }
        let due = match self.speed {
            Speed::Max => now,
            Speed::Times(s) => {
                let ahead_ms = (target - self.anchor_ts).max(0) as f64 / s;
                self.anchor_wall + Duration::from_secs_f64(ahead_ms / 1000.0)
            }
        };
        if now < due {
            return Step::Wait(due.min(self.next_clock));
        }
        let Some(ts) = head else {
            self.reached_ts = self.request.to_ms;
            self.finished = true;
            return Step::Ready(Output::End);
        };
        let place = Place {
            ts_ms: ts,
            index: self.index_of(ts),
        };
        self.pass(ts);
        match self.source.pop() {
            Some(item) => Step::Ready(Output::Event { place, item }),
            None => Step::Read,
        }
    }

    fn index_of(&self, ts: i64) -> u64 {
        if self.run.ts_ms == ts {
            self.run.index
        } else {
            0
        }
    }

    fn pass(&mut self, ts: i64) {
        self.run = Place {
            ts_ms: ts,
            index: self.index_of(ts) + 1,
        };
        self.reached_ts = self.reached_ts.max(ts);
    }
}
