//! The scope manager: named mutual-exclusion locks for jobs (amboy's `ScopeManager`).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use amboy_core::{Error, Result};
use parking_lot::{Mutex, MutexGuard};

/// Named locks held by job IDs, with atomic acquire, release and hand-over.
///
/// Every operation takes the whole set of scopes or nothing. Besides amboy's operations, a
/// caller may [`acquire_or_wait`](ScopeManager::acquire_or_wait): when a scope is taken, the
/// waiter (a job, for queues) is parked on it, first come first served (higher priorities first,
/// with [`acquire_or_wait_ranked`](ScopeManager::acquire_or_wait_ranked)). The release that frees
/// the scope hands it over: it takes every scope of the first waiter that can now have them all
/// for that waiter's owner, and hands that waiter back, so queues retry a blocked job exactly
/// when it can run, without polling, waiting out a lock, or waking every job that waits on the
/// scope only for all but one to wait again. A waiter that still needs a scope held by another
/// owner waits on that scope instead, keeping its place (by priority, then age). The manager knows what each
/// owner holds and where it waits, so [`release_held`](ScopeManager::release_held) and
/// [`unpark`](ScopeManager::unpark) need no list of scopes from the caller: a job whose scopes
/// changed meanwhile leaves nothing held or parked behind.
pub struct ScopeManager<W = ()> {
    inner: Mutex<Inner<W>>,
    /// How many scopes are held, written under the lock: releasing the scopes of an owner
    /// when none is held (jobs without scopes, as a rule) takes no lock.
    holding: AtomicUsize,
}

struct Inner<W> {
    /// Each held scope's owner.
    holders: HashMap<String, String>,
    /// The scopes each owner holds (the same facts as `holders`, by owner).
    held: HashMap<String, Vec<String>>,
    /// The waiters on each held scope, oldest first. A scope with waiters is always held:
    /// whatever frees it hands it over.
    waiters: HashMap<String, VecDeque<Waiter<W>>>,
    /// The scopes each owner's waiters are parked on (the same facts as `waiters`, by owner).
    parked: HashMap<String, Vec<String>>,
    /// The next waiter's `seq`.
    next_seq: u64,
}

/// A parked waiter, with the owner and scopes it asked for.
struct Waiter<W> {
    /// Served before the waiters of lower priority.
    priority: i32,
    /// When it first waited: among equals the oldest is served first, and a waiter moved to
    /// another scope's list keeps its place.
    seq: u64,
    owner: String,
    scopes: Vec<String>,
    waiter: W,
}

impl<W> Default for ScopeManager<W> {
    fn default() -> Self {
        ScopeManager {
            inner: Mutex::new(Inner {
                holders: HashMap::new(),
                held: HashMap::new(),
                waiters: HashMap::new(),
                parked: HashMap::new(),
                next_seq: 0,
            }),
            holding: AtomicUsize::new(0),
        }
    }
}

impl<W> fmt::Debug for ScopeManager<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("ScopeManager")
            .field("holders", &inner.holders)
            .field(
                "waiting",
                &inner.waiters.values().map(VecDeque::len).sum::<usize>(),
            )
            .finish()
    }
}

impl<W> ScopeManager<W> {
    /// An empty scope manager.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state, locked for a change: the count of held scopes is brought up to date when
    /// the guard goes.
    fn lock(&self) -> Counted<'_, W> {
        Counted {
            inner: self.inner.lock(),
            holding: &self.holding,
        }
    }

    /// Takes every scope for `owner`, or none: a scope held by another owner is a
    /// duplicate-scope error. Taking scopes `owner` holds already is allowed.
    pub fn acquire(&self, owner: &str, scopes: &[String]) -> Result<()> {
        if scopes.is_empty() {
            return Ok(());
        }
        let mut inner = self.lock();
        inner.check_free(owner, scopes, None)?;
        inner.take(owner, scopes);
        Ok(())
    }

    /// Like [`acquire`](Self::acquire), but when a scope is held by another owner, parks
    /// `waiter` on that scope and returns it in `Err`'s place: the release freeing the scope
    /// hands the waiter back. Waiters are served in the order they came.
    pub fn acquire_or_wait(
        &self,
        owner: &str,
        scopes: &[String],
        waiter: W,
    ) -> std::result::Result<(), Parked> {
        self.acquire_or_wait_ranked(owner, scopes, 0, waiter)
    }

    /// [`acquire_or_wait`](Self::acquire_or_wait) for a waiter of `priority`: waiters of
    /// higher priority are served first, in the order they came among equals (for queues that
    /// dispatch by priority).
    pub fn acquire_or_wait_ranked(
        &self,
        owner: &str,
        scopes: &[String],
        priority: i32,
        waiter: W,
    ) -> std::result::Result<(), Parked> {
        if scopes.is_empty() {
            return Ok(());
        }
        let mut inner = self.lock();
        match inner.held_by_other(owner, scopes, None) {
            None => {
                inner.take(owner, scopes);
                Ok(())
            }
            Some(scope) => {
                let scope = scope.to_owned();
                let seq = inner.next_seq;
                inner.next_seq += 1;
                inner.park(
                    scope,
                    Waiter {
                        priority,
                        seq,
                        owner: owner.to_owned(),
                        scopes: scopes.to_vec(),
                        waiter,
                    },
                );
                Err(Parked)
            }
        }
    }

    /// Releases `owner`'s scopes, ignoring those not held; a scope held by another owner is an
    /// error and nothing is released. The freed scopes are [handed over](Self::hand_over);
    /// returns the waiters they went to, their scopes taken.
    pub fn release(&self, owner: &str, scopes: &[String]) -> Result<Vec<W>> {
        if scopes.is_empty() {
            return Ok(Vec::new());
        }
        let mut inner = self.lock();
        inner.check_releasable(owner, scopes)?;
        inner.free(owner, scopes);
        Ok(inner.hand_over(scopes))
    }

    /// Atomically releases `release_owner`'s `release_scopes` and takes `acquire_scopes` for
    /// `acquire_owner`. A scope may be taken if it is free, held by `release_owner` (a
    /// hand-over) or held by `acquire_owner`; anything else is a duplicate-scope error and
    /// nothing changes. Then hands over the scopes left free, as [`release`](Self::release)
    /// does, and returns the waiters they went to.
    pub fn release_and_acquire(
        &self,
        release_owner: &str,
        release_scopes: &[String],
        acquire_owner: &str,
        acquire_scopes: &[String],
    ) -> Result<Vec<W>> {
        let mut inner = self.lock();
        inner.swap(release_owner, release_scopes, acquire_owner, acquire_scopes)?;
        Ok(inner.hand_over(release_scopes))
    }

    /// [`release_and_acquire`](Self::release_and_acquire) without the hand-over: the scopes
    /// left free keep their waiters until the caller [hands them over](Self::hand_over), once
    /// it knows it keeps the change (or has swapped back). Returns the scopes released.
    pub fn swap(
        &self,
        release_owner: &str,
        release_scopes: &[String],
        acquire_owner: &str,
        acquire_scopes: &[String],
    ) -> Result<Vec<String>> {
        let mut inner = self.lock();
        inner.swap(release_owner, release_scopes, acquire_owner, acquire_scopes)?;
        Ok(release_scopes.to_vec())
    }

    /// Hands the free scopes among `scopes` over, serving first the first waiter (by priority,
    /// then age) at the head of any of their lists: one that can take all of its scopes now
    /// gets them, taken for it; one that still needs a scope another owner holds waits on that
    /// scope instead. Returns the waiters handed their scopes.
    pub fn hand_over(&self, scopes: &[String]) -> Vec<W> {
        if scopes.is_empty() {
            return Vec::new();
        }
        self.lock().hand_over(scopes)
    }

    /// Releases every scope `owner` holds but those in `keep`, whatever the owner's scopes say
    /// now (a job's scopes may change while it waits or runs), and hands them over as
    /// [`release`](Self::release) does; returns the waiters they went to.
    pub fn release_held(&self, owner: &str, keep: &[String]) -> Vec<W> {
        if self.holding.load(Ordering::Acquire) == 0 {
            // The owner's own takes, which came before its release, stored at least one.
            return Vec::new();
        }
        let mut inner = self.lock();
        let Some(held) = inner.held.get(owner) else {
            return Vec::new();
        };
        let release: Vec<String> = held
            .iter()
            .filter(|scope| !keep.contains(scope))
            .cloned()
            .collect();
        inner.free(owner, &release);
        inner.hand_over(&release)
    }

    /// The scopes `owner` holds.
    pub fn held_by(&self, owner: &str) -> Vec<String> {
        self.inner
            .lock()
            .held
            .get(owner)
            .cloned()
            .unwrap_or_default()
    }

    /// The owner holding `scope`.
    pub fn holder(&self, scope: &str) -> Option<String> {
        self.inner.lock().holders.get(scope).cloned()
    }

    /// The number of held scopes.
    pub fn len(&self) -> usize {
        self.inner.lock().holders.len()
    }

    /// Whether no scope is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes back `owner`'s waiters that `is_it` recognizes (a job completed from outside
    /// while it waited, say), wherever they are parked; returns how many it took. The others
    /// stay parked.
    pub fn unpark(&self, owner: &str, is_it: impl Fn(&W) -> bool) -> usize {
        let mut inner = self.inner.lock();
        let Some(scopes) = inner.parked.get(owner).cloned() else {
            return 0;
        };
        let mut taken = 0;
        for scope in scopes {
            let Some(waiters) = inner.waiters.get_mut(&scope) else {
                continue;
            };
            let before = waiters.len();
            waiters.retain(|parked| parked.owner != owner || !is_it(&parked.waiter));
            let gone = before - waiters.len();
            if waiters.is_empty() {
                inner.waiters.remove(&scope);
            }
            for _ in 0..gone {
                inner.forget_parked(owner, &scope);
            }
            taken += gone;
        }
        taken
    }

    /// The number of parked waiters.
    pub fn waiting(&self) -> usize {
        self.inner.lock().waiters.values().map(VecDeque::len).sum()
    }
}

/// The locked state of a [`ScopeManager`] being changed; stores how many scopes are held when
/// dropped, before the lock is released.
struct Counted<'a, W> {
    inner: MutexGuard<'a, Inner<W>>,
    holding: &'a AtomicUsize,
}

impl<W> std::ops::Deref for Counted<'_, W> {
    type Target = Inner<W>;

    fn deref(&self) -> &Inner<W> {
        &self.inner
    }
}

impl<W> std::ops::DerefMut for Counted<'_, W> {
    fn deref_mut(&mut self) -> &mut Inner<W> {
        &mut self.inner
    }
}

impl<W> Drop for Counted<'_, W> {
    fn drop(&mut self) {
        self.holding
            .store(self.inner.holders.len(), Ordering::Release);
    }
}

/// The waiter was parked: the scope it needs is held by another owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parked;

impl<W> Inner<W> {
    /// The first scope held by an owner other than `owner` (and other than `handover`).
    fn held_by_other<'a>(
        &self,
        owner: &str,
        scopes: &'a [String],
        handover: Option<&str>,
    ) -> Option<&'a str> {
        scopes.iter().map(String::as_str).find(|scope| {
            self.holders
                .get(*scope)
                .is_some_and(|holder| holder != owner && Some(holder.as_str()) != handover)
        })
    }

    fn check_free(&self, owner: &str, scopes: &[String], handover: Option<&str>) -> Result<()> {
        match self.held_by_other(owner, scopes, handover) {
            None => Ok(()),
            Some(scope) => Err(Error::DuplicateScope {
                scope: scope.to_owned(),
                holder: self.holders[scope].clone(),
                requester: owner.to_owned(),
            }),
        }
    }

    fn check_releasable(&self, owner: &str, scopes: &[String]) -> Result<()> {
        for scope in scopes {
            if let Some(holder) = self.holders.get(scope)
                && holder != owner
            {
                return Err(Error::invalid(format!(
                    "cannot release scope '{scope}' for '{owner}': it is held by '{holder}'"
                )));
            }
        }
        Ok(())
    }

    fn take(&mut self, owner: &str, scopes: &[String]) {
        for scope in scopes {
            if let Entry::Vacant(entry) = self.holders.entry(scope.clone()) {
                entry.insert(owner.to_owned());
                match self.held.get_mut(owner) {
                    Some(held) => held.push(scope.clone()),
                    None => {
                        self.held.insert(owner.to_owned(), vec![scope.clone()]);
                    }
                }
            }
        }
    }

    /// Frees those of `scopes` that `owner` holds; their waiters wait for a
    /// [hand-over](Self::hand_over).
    fn free(&mut self, owner: &str, scopes: &[String]) {
        for scope in scopes {
            if self
                .holders
                .get(scope)
                .is_some_and(|holder| holder == owner)
            {
                self.holders.remove(scope);
                if let Some(held) = self.held.get_mut(owner) {
                    held.retain(|other| other != scope);
                    if held.is_empty() {
                        self.held.remove(owner);
                    }
                }
            }
        }
    }

    /// Releases and takes, or changes nothing and fails (see
    /// [`ScopeManager::release_and_acquire`]).
    fn swap(
        &mut self,
        release_owner: &str,
        release_scopes: &[String],
        acquire_owner: &str,
        acquire_scopes: &[String],
    ) -> Result<()> {
        self.check_releasable(release_owner, release_scopes)?;
        // A scope passes from the releasing owner only if it is among those released.
        let kept = acquire_scopes.iter().find(|scope| {
            !release_scopes.contains(scope)
                && self
                    .holders
                    .get(*scope)
                    .is_some_and(|holder| holder == release_owner && holder != acquire_owner)
        });
        if let Some(scope) = kept {
            return Err(Error::DuplicateScope {
                scope: scope.clone(),
                holder: release_owner.to_owned(),
                requester: acquire_owner.to_owned(),
            });
        }
        self.check_free(acquire_owner, acquire_scopes, Some(release_owner))?;
        self.free(release_owner, release_scopes);
        self.take(acquire_owner, acquire_scopes);
        Ok(())
    }

    /// Parks `waiter` on `scope`, which another owner holds, behind the waiters older than it.
    fn park(&mut self, scope: String, waiter: Waiter<W>) {
        match self.parked.get_mut(&waiter.owner) {
            Some(parked) => parked.push(scope.clone()),
            None => {
                self.parked
                    .insert(waiter.owner.clone(), vec![scope.clone()]);
            }
        }
        let waiters = self.waiters.entry(scope).or_default();
        if waiters
            .back()
            .is_none_or(|last| last.turn() < waiter.turn())
        {
            waiters.push_back(waiter);
        } else {
            let place = waiters.partition_point(|other| other.turn() < waiter.turn());
            waiters.insert(place, waiter);
        }
    }

    /// Forgets one of `owner`'s waiters parked on `scope`, taken from its list.
    fn forget_parked(&mut self, owner: &str, scope: &str) {
        if let Some(parked) = self.parked.get_mut(owner) {
            if let Some(place) = parked.iter().position(|other| other == scope) {
                parked.swap_remove(place);
            }
            if parked.is_empty() {
                self.parked.remove(owner);
            }
        }
    }

    /// See [`ScopeManager::hand_over`].
    fn hand_over(&mut self, scopes: &[String]) -> Vec<W> {
        let mut woken = Vec::new();
        // Each turn takes a scope or moves a waiter off a free scope's list: it ends.
        loop {
            let first = scopes
                .iter()
                .filter(|scope| !self.holders.contains_key(*scope))
                .filter_map(|scope| {
                    let head = self.waiters.get(scope)?.front()?;
                    Some((head.turn(), scope))
                })
                .min_by_key(|(turn, _)| *turn)
                .map(|(_, scope)| scope.clone());
            let Some(scope) = first else {
                return woken;
            };
            let Some(waiters) = self.waiters.get_mut(&scope) else {
                return woken;
            };
            let parked = waiters.pop_front().expect("a waiter at the head");
            if waiters.is_empty() {
                self.waiters.remove(&scope);
            }
            self.forget_parked(&parked.owner, &scope);
            match self.held_by_other(&parked.owner, &parked.scopes, None) {
                None => {
                    self.take(&parked.owner, &parked.scopes);
                    woken.push(parked.waiter);
                }
                Some(other) => {
                    let other = other.to_owned();
                    self.park(other, parked);
                }
            }
        }
    }
}

impl<W> Waiter<W> {
    /// Its place among waiters: higher priority first, then older first.
    fn turn(&self) -> (std::cmp::Reverse<i32>, u64) {
        (std::cmp::Reverse(self.priority), self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(scopes: &[&str]) -> Vec<String> {
        scopes.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Asks for `scopes` for `owner`, which must wait: its waiter is `job-<owner>`.
    fn must_wait(manager: &ScopeManager<String>, owner: &str, scopes: &[&str]) {
        assert_eq!(
            manager.acquire_or_wait(owner, &s(scopes), format!("job-{owner}")),
            Err(Parked),
            "{owner} waits"
        );
    }

    /// A manager where `a` holds x and `b` holds y.
    fn a_holds_x_and_b_y() -> ScopeManager<String> {
        let manager = ScopeManager::new();
        manager.acquire("a", &s(&["x"])).unwrap();
        manager.acquire("b", &s(&["y"])).unwrap();
        manager
    }

    /// One way of taking or releasing scopes, named.
    type ScopeOp = (
        &'static str,
        fn(&ScopeManager, &str, &[String]) -> Result<()>,
    );

    /// amboy's scope_test runs each case for both ways of acquiring.
    fn acquirers() -> [ScopeOp; 2] {
        [
            ("acquire", |m, owner, scopes| m.acquire(owner, scopes)),
            ("release_and_acquire", |m, owner, scopes| {
                m.release_and_acquire("", &[], owner, scopes).map(|_| ())
            }),
        ]
    }

    /// And both ways of releasing.
    fn releasers() -> [ScopeOp; 2] {
        [
            ("release", |m, owner, scopes| {
                m.release(owner, scopes).map(|_| ())
            }),
            ("release_and_acquire", |m, owner, scopes| {
                m.release_and_acquire(owner, scopes, "", &[]).map(|_| ())
            }),
        ]
    }

    #[test]
    fn unpark_takes_back_only_the_waiter_named() {
        let manager: ScopeManager<u32> = ScopeManager::new();
        manager.acquire("holder", &s(&["x", "y"])).unwrap();
        assert!(manager.acquire_or_wait("a", &s(&["x"]), 1).is_err());
        assert!(manager.acquire_or_wait("b", &s(&["x"]), 2).is_err());
        assert!(manager.acquire_or_wait("c", &s(&["x", "y"]), 3).is_err());
        assert_eq!(manager.waiting(), 3);
        assert_eq!(manager.unpark("b", |w| *w == 3), 0, "b's waiter is 2");
        assert_eq!(manager.unpark("b", |w| *w == 2), 1);
        assert_eq!(manager.waiting(), 2);
        assert_eq!(manager.release("holder", &s(&["x", "y"])).unwrap(), [1]);
        assert_eq!(manager.release("a", &s(&["x"])).unwrap(), [3]);
    }

    #[test]
    fn acquire_is_unique_per_scope() {
        for (name, acquire) in acquirers() {
            let manager = ScopeManager::new();
            acquire(&manager, "a", &s(&["x"])).unwrap();
            let err = acquire(&manager, "b", &s(&["x"])).unwrap_err();
            assert!(err.is_duplicate_scope(), "{name}");
            assert_eq!(
                err.to_string(),
                "scope 'x' is already held by 'a', not 'b'",
                "{name}"
            );
        }
    }

    #[test]
    fn acquire_is_idempotent() {
        for (name, acquire) in acquirers() {
            let manager = ScopeManager::new();
            acquire(&manager, "a", &s(&["x", "y"])).unwrap();
            acquire(&manager, "a", &s(&["x", "y"])).unwrap();
            acquire(&manager, "a", &s(&["x"])).unwrap();
            assert_eq!(manager.len(), 2, "{name}");
        }
    }

    #[test]
    fn acquire_is_all_or_nothing() {
        for (name, acquire) in acquirers() {
            let manager = ScopeManager::new();
            acquire(&manager, "a", &s(&["x"])).unwrap();
            assert!(
                acquire(&manager, "b", &s(&["y", "x", "z"])).is_err(),
                "{name}"
            );
            assert_eq!(manager.holder("y"), None, "{name}");
            assert_eq!(manager.holder("z"), None, "{name}");
            acquire(&manager, "b", &s(&["y", "z"])).unwrap();
        }
    }

    #[test]
    fn empty_scopes_always_succeed() {
        let manager = ScopeManager::<()>::new();
        manager.acquire("a", &[]).unwrap();
        manager.release("a", &[]).unwrap();
        assert!(manager.is_empty());
    }

    #[test]
    fn release_frees_for_others() {
        for (name, release) in releasers() {
            let manager = ScopeManager::new();
            manager.acquire("a", &s(&["x", "y"])).unwrap();
            release(&manager, "a", &s(&["x", "y"])).unwrap();
            assert!(manager.is_empty(), "{name}");
            manager.acquire("b", &s(&["x", "y"])).unwrap();
        }
    }

    #[test]
    fn release_ignores_unheld_scopes_and_is_idempotent() {
        for (name, release) in releasers() {
            let manager = ScopeManager::new();
            manager.acquire("a", &s(&["x"])).unwrap();
            release(&manager, "a", &s(&["x", "never"])).unwrap();
            release(&manager, "a", &s(&["x"])).unwrap();
            assert!(manager.is_empty(), "{name}");
        }
    }

    #[test]
    fn release_of_another_owners_scope_fails_atomically() {
        for (name, release) in releasers() {
            let manager = ScopeManager::new();
            manager.acquire("a", &s(&["x"])).unwrap();
            manager.acquire("b", &s(&["y"])).unwrap();
            assert!(release(&manager, "a", &s(&["x", "y"])).is_err(), "{name}");
            assert_eq!(
                manager.holder("x").as_deref(),
                Some("a"),
                "{name}: nothing released"
            );
            assert_eq!(manager.holder("y").as_deref(), Some("b"), "{name}");
        }
    }

    #[test]
    fn acquire_and_release_are_reversible() {
        let manager = ScopeManager::<()>::new();
        for _ in 0..3 {
            manager.acquire("a", &s(&["x", "y"])).unwrap();
            manager.release("a", &s(&["x", "y"])).unwrap();
        }
        assert!(manager.is_empty());
    }

    #[test]
    fn release_and_acquire_swaps_fully() {
        let manager = ScopeManager::<()>::new();
        manager.acquire("old", &s(&["x", "y"])).unwrap();
        manager
            .release_and_acquire("old", &s(&["x", "y"]), "new", &s(&["x", "y"]))
            .unwrap();
        assert_eq!(manager.holder("x").as_deref(), Some("new"));
        assert_eq!(manager.holder("y").as_deref(), Some("new"));
    }

    #[test]
    fn release_and_acquire_swaps_partially() {
        let manager = ScopeManager::<()>::new();
        manager.acquire("old", &s(&["x", "y"])).unwrap();
        manager
            .release_and_acquire("old", &s(&["x", "y"]), "new", &s(&["y", "z"]))
            .unwrap();
        assert_eq!(manager.holder("x"), None);
        assert_eq!(manager.holder("y").as_deref(), Some("new"));
        assert_eq!(manager.holder("z").as_deref(), Some("new"));
    }

    #[test]
    fn release_and_acquire_fails_without_change_on_conflict() {
        let manager = ScopeManager::<()>::new();
        manager.acquire("old", &s(&["x"])).unwrap();
        manager.acquire("other", &s(&["z"])).unwrap();
        let err = manager
            .release_and_acquire("old", &s(&["x"]), "new", &s(&["x", "z"]))
            .unwrap_err();
        assert!(err.is_duplicate_scope());
        assert_eq!(manager.holder("x").as_deref(), Some("old"));
        assert_eq!(manager.holder("z").as_deref(), Some("other"));
    }

    #[test]
    fn release_and_acquire_passes_on_only_the_scopes_released() {
        let manager = ScopeManager::<()>::new();
        manager.acquire("old", &s(&["x", "y"])).unwrap();
        let err = manager
            .release_and_acquire("old", &s(&["x"]), "new", &s(&["x", "y"]))
            .unwrap_err();
        assert!(err.is_duplicate_scope(), "y stays old's: {err}");
        assert_eq!(
            manager.holder("x").as_deref(),
            Some("old"),
            "nothing changed"
        );
        assert_eq!(manager.holder("y").as_deref(), Some("old"));
    }

    #[test]
    fn release_and_acquire_is_reversible() {
        let manager = ScopeManager::<()>::new();
        manager.acquire("a", &s(&["x"])).unwrap();
        manager
            .release_and_acquire("a", &s(&["x"]), "b", &s(&["x"]))
            .unwrap();
        manager
            .release_and_acquire("b", &s(&["x"]), "a", &s(&["x"]))
            .unwrap();
        assert_eq!(manager.holder("x").as_deref(), Some("a"));
    }

    #[test]
    fn a_release_hands_the_scope_to_the_first_waiter_only() {
        let manager = ScopeManager::<&'static str>::new();
        manager.acquire("a", &s(&["x"])).unwrap();
        assert_eq!(
            manager.acquire_or_wait("b", &s(&["x"]), "job-b"),
            Err(Parked)
        );
        assert_eq!(
            manager.acquire_or_wait("c", &s(&["y", "x"]), "job-c"),
            Err(Parked)
        );
        assert_eq!(manager.waiting(), 2);
        assert_eq!(manager.acquire_or_wait("d", &s(&["y"]), "job-d"), Ok(()));
        assert!(
            manager.release("d", &s(&["y"])).unwrap().is_empty(),
            "nobody waits on y"
        );
        assert_eq!(manager.release("a", &s(&["x"])).unwrap(), ["job-b"]);
        assert_eq!(manager.holder("x").as_deref(), Some("b"), "taken for b");
        assert_eq!(manager.waiting(), 1, "c waits on for b's release");
        assert_eq!(
            manager.acquire_or_wait("b", &s(&["x"]), "job-b"),
            Ok(()),
            "b finds its scope held for it"
        );
        assert_eq!(manager.release("b", &s(&["x"])).unwrap(), ["job-c"]);
        assert_eq!(manager.holder("x").as_deref(), Some("c"));
        assert_eq!(manager.holder("y").as_deref(), Some("c"));
        assert_eq!(manager.waiting(), 0);
    }

    #[test]
    fn many_waiters_on_one_scope_are_handed_it_one_release_at_a_time_in_order() {
        let manager = ScopeManager::<usize>::new();
        manager.acquire("holder", &s(&["x"])).unwrap();
        for n in 0..100 {
            let owner = format!("job-{n}");
            assert_eq!(manager.acquire_or_wait(&owner, &s(&["x"]), n), Err(Parked));
        }
        let mut owner = "holder".to_owned();
        for n in 0..100 {
            assert_eq!(manager.release(&owner, &s(&["x"])).unwrap(), [n]);
            owner = format!("job-{n}");
            assert_eq!(manager.holder("x"), Some(owner.clone()));
            assert_eq!(manager.waiting(), 99 - n);
        }
    }

    #[test]
    fn a_waiter_needing_another_held_scope_waits_on_that_one() {
        let manager = a_holds_x_and_b_y();
        must_wait(&manager, "c", &["x", "y"]);
        must_wait(&manager, "d", &["x"]);
        // c still needs y: x goes to d behind it, and c moves to y.
        assert_eq!(manager.release("a", &s(&["x"])).unwrap(), ["job-d"]);
        assert_eq!(manager.waiting(), 1);
        // y is free but x is d's: c moves back to x.
        assert!(manager.release("b", &s(&["y"])).unwrap().is_empty());
        assert_eq!(manager.holder("y"), None);
        assert_eq!(manager.release("d", &s(&["x"])).unwrap(), ["job-c"]);
        assert_eq!(manager.holder("x").as_deref(), Some("c"));
        assert_eq!(manager.holder("y").as_deref(), Some("c"));
        assert_eq!(manager.waiting(), 0);
    }

    #[test]
    fn unpark_finds_a_waiter_moved_to_another_scope() {
        let manager = a_holds_x_and_b_y();
        must_wait(&manager, "c", &["x", "y"]);
        assert!(manager.release("a", &s(&["x"])).unwrap().is_empty());
        // c waits on y now.
        assert_eq!(manager.unpark("c", |_| true), 1);
        assert_eq!(manager.waiting(), 0);
        assert!(manager.release("b", &s(&["y"])).unwrap().is_empty());
    }

    #[test]
    fn release_held_frees_what_the_owner_holds_whatever_it_names_now() {
        let manager = ScopeManager::new();
        manager.acquire("a", &s(&["x"])).unwrap();
        must_wait(&manager, "b", &["x", "y"]);
        assert_eq!(manager.release("a", &s(&["x"])).unwrap(), ["job-b"]);
        let mut held = manager.held_by("b");
        held.sort();
        assert_eq!(held, ["x", "y"]);
        // b's scopes changed to z meanwhile: what it was handed is freed all the same.
        manager.acquire("b", &s(&["z"])).unwrap();
        must_wait(&manager, "c", &["y"]);
        assert_eq!(manager.release_held("b", &s(&["z"])), ["job-c"]);
        assert_eq!(manager.held_by("b"), ["z"], "kept");
        assert_eq!(manager.holder("x"), None);
        assert_eq!(manager.holder("y").as_deref(), Some("c"));
        assert!(manager.release_held("b", &[]).is_empty());
        assert!(manager.held_by("b").is_empty());
    }

    #[test]
    fn a_waiter_moved_to_another_scope_keeps_its_place_by_age() {
        let manager = a_holds_x_and_b_y();
        must_wait(&manager, "old", &["x", "y"]);
        must_wait(&manager, "new", &["y"]);
        // x is free, y still b's: the older waiter moves to y, ahead of the newer one.
        assert!(manager.release("a", &s(&["x"])).unwrap().is_empty());
        assert_eq!(manager.release("b", &s(&["y"])).unwrap(), ["job-old"]);
    }

    #[test]
    fn waiters_are_served_by_priority_then_age_across_the_scopes_freed() {
        let manager = ScopeManager::<&'static str>::new();
        manager.acquire("holder", &s(&["x", "y"])).unwrap();
        let wait = |owner, scopes: &[&str], priority, waiter| {
            assert_eq!(
                manager.acquire_or_wait_ranked(owner, &s(scopes), priority, waiter),
                Err(Parked)
            );
        };
        wait("low", &["x", "y"], 0, "job-low");
        wait("high", &["y"], 5, "job-high");
        // Both scopes freed at once: high, first by priority though it came later and waits
        // on the second scope listed, gets y; low, needing y too, moves to y.
        assert_eq!(
            manager.release("holder", &s(&["x", "y"])).unwrap(),
            ["job-high"]
        );
        assert_eq!(manager.holder("x"), None);
        // Among equal priorities the older goes first; low, of a lower one, last.
        wait("older", &["y"], 5, "job-older");
        wait("newer", &["y"], 5, "job-newer");
        assert_eq!(manager.release("high", &s(&["y"])).unwrap(), ["job-older"]);
        assert_eq!(manager.release("older", &s(&["y"])).unwrap(), ["job-newer"]);
        assert_eq!(manager.release("newer", &s(&["y"])).unwrap(), ["job-low"]);
    }

    #[test]
    fn a_swap_hands_over_only_when_asked() {
        let manager = ScopeManager::<&'static str>::new();
        manager.acquire("old", &s(&["x"])).unwrap();
        assert_eq!(
            manager.acquire_or_wait("w", &s(&["x"]), "job-w"),
            Err(Parked)
        );
        let freed = manager.swap("old", &s(&["x"]), "new", &s(&["z"])).unwrap();
        assert_eq!(freed, ["x"]);
        assert_eq!(manager.holder("x"), None);
        assert_eq!(manager.waiting(), 1, "the waiter waits for the hand-over");
        // Swapped back, nothing to hand over.
        let back = manager.swap("new", &s(&["z"]), "old", &s(&["x"])).unwrap();
        assert!(manager.hand_over(&back).is_empty());
        assert_eq!(manager.holder("x").as_deref(), Some("old"));
        assert_eq!(manager.release("old", &s(&["x"])).unwrap(), ["job-w"]);
        assert_eq!(manager.holder("x").as_deref(), Some("w"));
    }

    #[test]
    fn handover_keeps_waiters_parked() {
        let manager = ScopeManager::<&'static str>::new();
        manager.acquire("a", &s(&["x"])).unwrap();
        assert_eq!(
            manager.acquire_or_wait("b", &s(&["x"]), "job-b"),
            Err(Parked)
        );
        let woken = manager
            .release_and_acquire("a", &s(&["x"]), "a2", &s(&["x"]))
            .unwrap();
        assert!(
            woken.is_empty(),
            "the scope passed to the next attempt, still taken"
        );
        assert_eq!(manager.release("a2", &s(&["x"])).unwrap(), ["job-b"]);
    }
}
