//! Per-client space quotas: what one client may hold at once.
//!
//! A *client* is the peer TubId of the connection a call arrived on (calls made in this
//! process have none and are not limited). TubIds cost nothing to make, so a quota bounds
//! what one connection (one identity) can hold, not what one person can: the whole is
//! bounded by the free space above `reserved_space`, and the number of connections by the
//! RPC layer's limits.
//!
//! A client holds the bytes promised to its unfinished uploads (each allocated share's size
//! plus its header, given back when the upload is closed or aborted) plus the bytes by which
//! its mutable slot writes grew slots (given back as far as its writes shrink or delete
//! shares). The sum may not pass [`StorageConfig::max_space_per_client`]: an allocation or a
//! slot write that would pass it is refused with [`StorageError::QuotaExceeded`].
//!
//! Slot growth stays charged after the connection ends (a slot does not go away with its
//! writer), as long as the client is among the [`MAX_TRACKED_CLIENTS`] most recently active
//! ones; past that, the least recently active client without unfinished uploads is
//! forgotten — which gives it a fresh quota, as a fresh TubId would.
//!
//! [`StorageConfig::max_space_per_client`]: super::StorageConfig::max_space_per_client

use std::collections::HashMap;

use folio_rpc::TubId;
use tracing::info;

use super::StorageError;

/// The most clients whose slot growth is remembered (clients with unfinished uploads are
/// always remembered: their number is bounded by the uploads the free space allows).
pub const MAX_TRACKED_CLIENTS: usize = 4096;

/// What a charge is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Charge {
    /// Space promised to an unfinished upload.
    Promise,
    /// Growth of mutable slots.
    SlotGrowth,
}

#[derive(Debug, Default)]
struct Usage {
    promised: u64,
    slots: u64,
    /// When it last changed, in [`Quotas::clock`] ticks.
    last: u64,
}

impl Usage {
    fn held(&self) -> u64 {
        self.promised.saturating_add(self.slots)
    }
}

/// The space each client holds.
#[derive(Debug)]
pub(super) struct Quotas {
    limit: u64,
    clients: HashMap<TubId, Usage>,
    clock: u64,
}

impl Quotas {
    pub(super) fn new(limit: u64) -> Self {
        Quotas {
            limit,
            clients: HashMap::new(),
            clock: 0,
        }
    }

    /// The bytes `client` holds.
    pub(super) fn held(&self, client: &TubId) -> u64 {
        self.clients.get(client).map_or(0, Usage::held)
    }

    /// Charges `bytes` to `client`, or refuses if that would pass the quota. `None` (a call
    /// from this process) is never limited.
    pub(super) fn take(
        &mut self,
        client: Option<TubId>,
        bytes: u64,
        what: Charge,
    ) -> Result<(), StorageError> {
        let Some(client) = client else {
            return Ok(());
        };
        if bytes == 0 {
            return Ok(());
        }
        let held = self.held(&client);
        if held.saturating_add(bytes) > self.limit {
            info!(%client, held, requested = bytes, limit = self.limit, ?what, "client quota: refused");
            return Err(StorageError::QuotaExceeded {
                held,
                requested: bytes,
                maximum: self.limit,
            });
        }
        if !self.clients.contains_key(&client) {
            self.make_room();
        }
        self.clock += 1;
        let u = self.clients.entry(client).or_default();
        u.last = self.clock;
        match what {
            Charge::Promise => u.promised += bytes,
            Charge::SlotGrowth => u.slots += bytes,
        }
        Ok(())
    }

    /// Gives back up to `bytes` of what `client` holds for `what`.
    pub(super) fn give_back(&mut self, client: Option<TubId>, bytes: u64, what: Charge) {
        let Some(client) = client else { return };
        let Some(u) = self.clients.get_mut(&client) else {
            return;
        };
        match what {
            Charge::Promise => u.promised = u.promised.saturating_sub(bytes),
            Charge::SlotGrowth => u.slots = u.slots.saturating_sub(bytes),
        }
        if u.held() == 0 {
            self.clients.remove(&client);
        }
    }

    /// Forgets the least recently active client without unfinished uploads when
    /// [`MAX_TRACKED_CLIENTS`] are remembered.
    fn make_room(&mut self) {
        if self.clients.len() < MAX_TRACKED_CLIENTS {
            return;
        }
        let oldest = self
            .clients
            .iter()
            .filter(|(_, u)| u.promised == 0)
            .min_by_key(|(_, u)| u.last)
            .map(|(c, _)| *c);
        if let Some(c) = oldest {
            self.clients.remove(&c);
        }
    }

    /// Clients remembered (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(n: u32) -> TubId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_be_bytes());
        TubId::from_bytes(b)
    }

    #[test]
    fn a_client_holds_at_most_the_limit_and_gets_it_back() {
        let mut q = Quotas::new(100);
        let a = Some(client(1));
        q.take(a, 60, Charge::Promise).unwrap();
        q.take(a, 40, Charge::SlotGrowth).unwrap();
        assert_eq!(
            q.take(a, 1, Charge::Promise),
            Err(StorageError::QuotaExceeded {
                held: 100,
                requested: 1,
                maximum: 100
            })
        );
        // Another client has its own quota; this process has none.
        q.take(Some(client(2)), 100, Charge::Promise).unwrap();
        q.take(None, u64::MAX, Charge::Promise).unwrap();
        q.give_back(a, 60, Charge::Promise);
        q.take(a, 60, Charge::SlotGrowth).unwrap();
        q.give_back(a, 1000, Charge::SlotGrowth);
        q.give_back(Some(client(2)), 100, Charge::Promise);
        assert_eq!(q.len(), 0, "clients holding nothing are forgotten");
    }

    #[test]
    fn the_table_of_clients_is_bounded_but_keeps_open_uploads() {
        let mut q = Quotas::new(100);
        q.take(Some(client(0)), 10, Charge::Promise).unwrap();
        for n in 1..=MAX_TRACKED_CLIENTS as u32 + 10 {
            q.take(Some(client(n)), 10, Charge::SlotGrowth).unwrap();
        }
        assert_eq!(q.len(), MAX_TRACKED_CLIENTS);
        assert_eq!(q.held(&client(0)), 10, "a client with an open upload stays");
        assert_eq!(
            q.held(&client(1)),
            0,
            "the least recently active is forgotten"
        );
    }
}
