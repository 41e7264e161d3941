//! The subscribers of a top-N job and the pushes to them.
//!
//! The sequencer calls [`HubPublisher::publish`] on every tick with the
//! engine in hand: the hub takes, under its own lock, the changed keys that
//! some subscriber follows (a key changed while nobody follows it costs
//! nothing more), serializes each list once, and gives every subscriber one
//! message with all of its changed keys (shared pointers to the lists; the
//! subscriber's own task joins them into its event). Queues are bounded and written
//! with `try_send`: a subscriber whose queue is full has stopped reading;
//! it is dropped (its stream ends) and counted, and nobody waits for it.
//!
//! In cluster mode ([`super::cluster`]) the lists come from the owners of
//! the keys over NATS instead ([`Hub::deliver`]): the hub keeps the latest
//! list of every key it has a subscriber for, a new subscription is
//! registered first and gets its snapshot (from those lists, or asked of
//! the owners) before any update ([`Hub::complete`]).
//!
//! Lock order: the pipeline's, then the hub's (the sequencer holds the
//! pipeline while publishing; a new subscription registers first, then
//! takes the pipeline to send its snapshot, so the snapshot is never older
//! than an update queued before it).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use trawler_api::streams::{TopAnswer, TopMember, TopMessage};
use trawler_api::ApiError;
use trawler_stream::{Publish, TopList, TopN};

/// Messages queued per subscriber before it counts as stalled.
pub const QUEUE: usize = 64;

/// Counters of the hub, for `/metrics` and stats.
#[derive(Debug, Default)]
pub struct HubCounters {
    /// Subscribers now.
    pub subscribers: AtomicU64,
    /// Subscribers dropped because their queue was full.
    pub dropped_slow: AtomicU64,
    /// Subscriptions refused at the cap.
    pub refused: AtomicU64,
    /// Messages queued to subscribers.
    pub messages: AtomicU64,
    /// Key lists pushed (a message holds one or more).
    pub lists: AtomicU64,
}

struct Sub {
    public: String,
    keys: Vec<String>,
    tx: mpsc::Sender<TopMessage>,
    /// Its snapshot is sent: updates may follow (cluster mode registers a
    /// subscriber before its snapshot arrives).
    ready: bool,
}

#[derive(Default)]
struct State {
    subs: HashMap<u64, Sub>,
    by_key: HashMap<String, Vec<u64>>,
    by_public: HashMap<String, u64>,
    /// Cluster mode: the latest list received of each followed key.
    latest: HashMap<String, Arc<str>>,
    next: u64,
}

impl State {
    fn add_keys(&mut self, sub: u64, keys: &[String]) {
        for k in keys {
            self.by_key.entry(k.clone()).or_default().push(sub);
        }
    }

    fn remove_keys(&mut self, sub: u64, keys: &[String]) {
        for k in keys {
            if let Some(list) = self.by_key.get_mut(k) {
                list.retain(|&s| s != sub);
                if list.is_empty() {
                    self.by_key.remove(k);
                    self.latest.remove(k);
                }
            }
        }
    }

    fn remove(&mut self, sub: u64) -> bool {
        match self.subs.remove(&sub) {
            Some(s) => {
                self.remove_keys(sub, &s.keys);
                self.by_public.remove(&s.public);
                true
            }
            None => false,
        }
    }
}

/// The subscribers of one top-N job.
pub struct Hub {
    state: Mutex<State>,
    max_subscribers: usize,
    seq: AtomicU64,
    ids: std::collections::hash_map::RandomState,
    /// Its counters.
    pub counters: HubCounters,
}

/// Drops its subscription when the client goes away.
struct Guard {
    hub: Arc<Hub>,
    sub: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.sub);
    }
}

/// A registered subscription, before its snapshot is sent.
pub struct Registered {
    /// The internal id.
    pub sub: u64,
    /// The public id.
    pub public: String,
    /// Its queue's sender (for the snapshot).
    pub tx: mpsc::Sender<TopMessage>,
    /// Its queue.
    pub rx: mpsc::Receiver<TopMessage>,
}

impl Hub {
    /// A hub admitting at most `max_subscribers`.
    pub fn new(max_subscribers: usize) -> Arc<Hub> {
        Arc::new(Hub {
            state: Mutex::new(State::default()),
            max_subscribers,
            seq: AtomicU64::new(0),
            ids: std::collections::hash_map::RandomState::new(),
            counters: HubCounters::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a subscriber to `keys`; 503 at the cap.
    pub fn register(&self, keys: &[String]) -> Result<Registered, ApiError> {
        self.register_as(keys, true)
    }

    /// Registers a subscriber whose snapshot is still to come: no update
    /// goes to it before [`Hub::complete`].
    pub fn register_pending(&self, keys: &[String]) -> Result<Registered, ApiError> {
        self.register_as(keys, false)
    }

    fn register_as(&self, keys: &[String], ready: bool) -> Result<Registered, ApiError> {
        let mut st = self.lock();
        if st.subs.len() >= self.max_subscribers {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::TooManySubscribers {
                limit: self.max_subscribers,
            });
        }
        st.next += 1;
        let sub = st.next;
        // 128 bits from the process's random SipHash keys: unguessable,
        // so the id alone lets its holder change the keys.
        let public = format!(
            "{:016x}{:016x}",
            self.ids.hash_one((sub, 0u8)),
            self.ids.hash_one((sub, 1u8))
        );
        let (tx, rx) = mpsc::channel(QUEUE);
        st.add_keys(sub, keys);
        st.by_public.insert(public.clone(), sub);
        st.subs.insert(
            sub,
            Sub {
                public: public.clone(),
                keys: keys.to_vec(),
                tx: tx.clone(),
                ready,
            },
        );
        self.counters
            .subscribers
            .store(st.subs.len() as u64, Ordering::Relaxed);
        Ok(Registered {
            sub,
            public,
            tx,
            rx,
        })
    }

    /// The guard that unsubscribes `sub` when dropped.
    pub fn guard(self: &Arc<Self>, sub: u64) -> Box<dyn Send + Sync> {
        Box::new(Guard {
            hub: self.clone(),
            sub,
        })
    }

    fn unsubscribe(&self, sub: u64) {
        let mut st = self.lock();
        st.remove(sub);
        self.counters
            .subscribers
            .store(st.subs.len() as u64, Ordering::Relaxed);
    }

    /// Replaces the keys of the subscription `public`; returns its sender
    /// and the keys it did not follow before (to send their snapshots).
    pub fn set_keys(
        &self,
        public: &str,
        keys: &[String],
    ) -> Result<(mpsc::Sender<TopMessage>, Vec<String>), ApiError> {
        let mut st = self.lock();
        let sub = *st.by_public.get(public).ok_or_else(|| {
            ApiError::not_found("no_subscription", "no live subscription has this id")
        })?;
        let old = std::mem::take(&mut st.subs.get_mut(&sub).expect("registered").keys);
        // Kept keys stay registered (and keep their latest list).
        let gone: Vec<String> = old.iter().filter(|k| !keys.contains(k)).cloned().collect();
        let added: Vec<String> = keys.iter().filter(|k| !old.contains(k)).cloned().collect();
        st.remove_keys(sub, &gone);
        st.add_keys(sub, &added);
        let s = st.subs.get_mut(&sub).expect("registered");
        s.keys = keys.to_vec();
        Ok((s.tx.clone(), added))
    }

    /// Ends every subscription (shutdown): their streams finish, so the
    /// server's graceful stop does not wait for clients that never leave.
    pub fn close_all(&self) {
        let mut st = self.lock();
        *st = State {
            next: st.next,
            ..State::default()
        };
        self.counters.subscribers.store(0, Ordering::Relaxed);
    }

    /// The next message id.
    pub fn next_id(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Queues `event` with `lists` to one subscriber (a snapshot); a full
    /// queue drops it like a slow one.
    pub fn send_one(&self, tx: &mpsc::Sender<TopMessage>, event: &'static str, lists: &[TopList]) {
        let m = TopMessage {
            id: self.next_id(),
            event,
            lists: lists.iter().map(|l| list_json(l).into()).collect(),
        };
        if tx.try_send(m).is_ok() {
            self.counters.messages.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Hub {
    /// Cluster mode: lists from the keys' owners. Each followed key's is
    /// kept as its latest, and every ready subscriber gets one update with
    /// its keys among them.
    pub fn deliver(&self, lists: &[(String, Arc<str>)]) {
        let mut st = self.lock();
        let mut followed = Vec::new();
        for (key, json) in lists {
            if st.by_key.contains_key(key) {
                st.latest.insert(key.clone(), json.clone());
                followed.push((key.as_str(), json.clone()));
            }
        }
        self.fan_out(&mut st, &followed);
    }

    /// The keys among `keys` with no latest list (to ask their owners).
    pub fn missing(&self, keys: &[String]) -> Vec<String> {
        let st = self.lock();
        keys.iter()
            .filter(|k| !st.latest.contains_key(*k))
            .cloned()
            .collect()
    }

    /// The followed keys `pick` names (a partition whose owner changed).
    pub fn followed(&self, pick: impl Fn(&str) -> bool) -> Vec<String> {
        let st = self.lock();
        st.by_key.keys().filter(|k| pick(k)).cloned().collect()
    }

    /// Cluster mode: sends subscriber `sub` the snapshot of `keys` — each
    /// key's latest list, else its owner's `answered` one — and lets
    /// updates flow to it. Returns the keys with neither (their owner is
    /// being replaced); they are named in a `rebuilding` event and their
    /// lists come as updates.
    pub fn complete(
        &self,
        public: &str,
        keys: &[String],
        answered: &HashMap<String, Arc<str>>,
    ) -> Vec<String> {
        let mut st = self.lock();
        let mut lists = Vec::new();
        let mut missing = Vec::new();
        for k in keys {
            match st.latest.get(k).or_else(|| answered.get(k)).cloned() {
                Some(json) => {
                    if st.by_key.contains_key(k) {
                        st.latest.insert(k.clone(), json.clone());
                    }
                    lists.push(json);
                }
                None => missing.push(k.clone()),
            }
        }
        let Some(s) = st
            .by_public
            .get(public)
            .copied()
            .and_then(|sub| st.subs.get_mut(&sub))
        else {
            return Vec::new();
        };
        s.ready = true;
        let tx = s.tx.clone();
        self.send_json(&tx, "snapshot", lists);
        if !missing.is_empty() {
            let keys = missing
                .iter()
                .map(|k| serde_json::to_string(k).expect("a string").into())
                .collect();
            self.send_json(&tx, "rebuilding", keys);
        }
        missing
    }

    fn send_json(&self, tx: &mpsc::Sender<TopMessage>, event: &'static str, lists: Vec<Arc<str>>) {
        let m = TopMessage {
            id: self.next_id(),
            event,
            lists,
        };
        if tx.try_send(m).is_ok() {
            self.counters.messages.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One update to each ready subscriber of some of `lists`' keys; the
    /// slow ones (full queue) are dropped.
    fn fan_out(&self, st: &mut State, lists: &[(&str, Arc<str>)]) {
        if lists.is_empty() {
            return;
        }
        let mut per_sub: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, (key, _)) in lists.iter().enumerate() {
            for &sub in st.by_key.get(*key).into_iter().flatten() {
                per_sub.entry(sub).or_default().push(i);
            }
        }
        let id = self.next_id();
        let mut slow = Vec::new();
        for (sub, idx) in per_sub {
            let Some(s) = st.subs.get(&sub) else { continue };
            if !s.ready {
                continue;
            }
            let m = TopMessage {
                id,
                event: "update",
                lists: idx.iter().map(|&i| lists[i].1.clone()).collect(),
            };
            match s.tx.try_send(m) {
                Ok(()) => {
                    self.counters.messages.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .lists
                        .fetch_add(idx.len() as u64, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Full(_)) => slow.push(sub),
                // Gone: its guard unsubscribes it.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        for sub in slow {
            if st.remove(sub) {
                self.counters.dropped_slow.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    sub,
                    "top-N subscriber dropped: its queue is full (it stopped reading)"
                );
            }
        }
        self.counters
            .subscribers
            .store(st.subs.len() as u64, Ordering::Relaxed);
    }
}

/// The answer type of one list.
pub fn answer(l: &TopList) -> TopAnswer {
    TopAnswer {
        key: l.key.clone(),
        total: l.total,
        events: l.events,
        members: l.members,
        top: l
            .top
            .iter()
            .map(|(m, v)| TopMember {
                member: m.clone(),
                value: *v,
            })
            .collect(),
        latest_ts: l.latest_ts,
        window_end: l.window_end,
    }
}

/// One list as the JSON subscribers receive.
pub fn list_json(l: &TopList) -> String {
    serde_json::to_string(&answer(l)).expect("a list serializes")
}

/// The hub as the pipeline's [`Publish`].
pub struct HubPublisher(pub Arc<Hub>);

impl Publish for HubPublisher {
    fn publish(&mut self, engine: &mut TopN, now_ms: i64, interval_ms: i64) {
        let hub = &self.0;
        let mut st = hub.lock();
        let lists = engine.take_changed(now_ms, interval_ms, |k| st.by_key.contains_key(k));
        if lists.is_empty() {
            return;
        }
        let json: Vec<(&str, Arc<str>)> = lists
            .iter()
            .map(|l| (l.key.as_str(), list_json(l).into()))
            .collect();
        hub.fan_out(&mut st, &json);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(key: &str, total: u64) -> (String, Arc<str>) {
        (
            key.to_owned(),
            format!("{{\"key\":\"{key}\",\"total\":{total}}}").into(),
        )
    }

    #[test]
    fn a_cluster_snapshot_is_never_older_than_an_update_and_precedes_them() {
        let hub = Hub::new(10);
        let keys: Vec<String> = ["p1", "p2", "p3"].map(String::from).to_vec();
        let mut r = hub.register_pending(&keys).unwrap();
        // An update while the owners are asked: kept, not sent.
        hub.deliver(&[list("p1", 5), list("zz", 1)]);
        assert!(r.rx.try_recv().is_err());
        // The owners' answer for p1 is older than the update received.
        let answered: HashMap<String, Arc<str>> = [list("p1", 4), list("p2", 7)].into();
        assert_eq!(hub.complete(&r.public, &keys, &answered), ["p3"]);
        let snapshot = r.rx.try_recv().unwrap();
        assert_eq!(snapshot.event, "snapshot");
        assert_eq!(
            snapshot.data(),
            "{\"lists\":[{\"key\":\"p1\",\"total\":5},{\"key\":\"p2\",\"total\":7}]}"
        );
        let rebuilding = r.rx.try_recv().unwrap();
        assert_eq!(
            (rebuilding.event, rebuilding.data()),
            ("rebuilding", "{\"keys\":[\"p3\"]}".to_owned())
        );
        // Then updates flow; a key nobody follows is not kept.
        hub.deliver(&[list("p3", 2)]);
        assert_eq!(r.rx.try_recv().unwrap().event, "update");
        assert_eq!(hub.missing(&["zz".to_owned(), "p3".to_owned()]), ["zz"]);
    }
}
