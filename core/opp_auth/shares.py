"""Fair shares of what anonymous callers can fill: login flows in progress and authorization codes.

One global cap lets a few addresses take every place (35 addresses x 30 flows
filled 1,000 login flows), and an IPv6 /64 is an unlimited supply of addresses.
So every such resource is an :class:`AddressShares`: two pools, each with a
cap, and shares inside each pool.

- **Privileged pool**: addresses some account logged in from before
  (:class:`KnownAddresses`: a successful login or a refresh-token use, and the
  ``last_used_ip`` of every stored refresh token at start-up) and addresses in
  a trusted network (the networks of configured ``trusted_networks`` providers
  and ``http: ban_allowlist``). Strangers never take its places, so no number of
  strangers can refuse the owner at an address they used before, or at home.
  A known address is a group of its own; a trusted-network address that is not
  known is grouped by its prefix.
- **Strangers' pool**: everyone else, grouped by network prefix (IPv4 /24,
  IPv6 /64, an IPv4-mapped IPv6 address counting as IPv4).

In each pool an address holds at most ``per_address`` places and a group at
most ``per_prefix``. When the pool is full, a newcomer whose group holds fewer
places than the largest group takes the place of that group's oldest entry
(max-min fairness); a caller from a largest group is refused (or, where the
resource must not refuse, replaces its own group's oldest entry). So flooding
from few prefixes leaves room for everyone else, and a flood from many
prefixes can only shrink every prefix to an equal share: a client from a fresh
prefix still gets in, though its entry may be displaced if the flood outnumbers
the pool in prefixes. Known and trusted addresses are unaffected either way.
Local addresses (private, loopback) are not privileged for being local: behind
a reverse proxy that is not configured as trusted, every client would be.

Every operation is O(1): counts per address and per group are kept on each
add and remove, and the largest group is found through buckets of groups by
count (a count changes by one at a time, so the largest moves by at most one).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from .network import address_and_prefix, in_networks, parse_networks

KNOWN_ADDRESSES_PER_ACCOUNT = 16
MAX_KNOWN_ACCOUNTS = 10000


class Full(Exception):
    """No place for this caller: its address or group holds its share, or the pool is full and its group is largest."""


class KnownAddresses:
    """Addresses accounts logged in from: the last 16 per account, for the 10,000 accounts seen last."""

    def __init__(self, per_account: int = KNOWN_ADDRESSES_PER_ACCOUNT, max_accounts: int = MAX_KNOWN_ACCOUNTS) -> None:
        """Empty."""
        self.per_account = per_account
        self.max_accounts = max_accounts
        self._accounts: OrderedDict[Hashable, OrderedDict[str, None]] = OrderedDict()
        self._refs: dict[str, int] = {}

    def __contains__(self, address: object) -> bool:
        """Whether some remembered account logged in from address (canonical form)."""
        return address in self._refs

    def __len__(self) -> int:
        """How many distinct addresses are remembered."""
        return len(self._refs)

    def add(self, account: Hashable, address: str | None) -> None:
        """Remember that account logged in from address (a non-IP address is ignored)."""
        if account is None or not isinstance(address, str):
            return
        parsed = address_and_prefix(address)
        if parsed is None:
            return
        address = parsed[0]
        addresses = self._accounts.pop(account, None)
        if addresses is None:
            addresses = OrderedDict()
        elif address in addresses:
            addresses.move_to_end(address)
            self._accounts[account] = addresses
            return
        addresses[address] = None
        self._refs[address] = self._refs.get(address, 0) + 1
        if len(addresses) > self.per_account:
            self._unref(addresses.popitem(last=False)[0])
        self._accounts[account] = addresses
        while len(self._accounts) > self.max_accounts:
            for old in self._accounts.popitem(last=False)[1]:
                self._unref(old)

    def _unref(self, address: str) -> None:
        """One account fewer remembers address."""
        left = self._refs[address] - 1
        if left:
            self._refs[address] = left
        else:
            del self._refs[address]


class FairPool:
    """Entries by key, capped in total, per address and per group, with max-min fair displacement."""

    def __init__(self, capacity: int, per_address: int, per_group: int) -> None:
        """Empty."""
        self.capacity = capacity
        self.per_address = per_address
        self.per_group = per_group
        self._entries: dict[Hashable, tuple[Hashable, Hashable]] = {}
        self._by_address: dict[Hashable, OrderedDict[Hashable, None]] = {}
        self._by_group: dict[Hashable, OrderedDict[Hashable, None]] = {}
        self._buckets: dict[int, dict[Hashable, None]] = {}
        self._largest = 0

    def __len__(self) -> int:
        """Entries held."""
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """Whether key holds a place."""
        return key in self._entries

    def address_count(self, address: Hashable) -> int:
        """Places held by address."""
        held = self._by_address.get(address)
        return len(held) if held is not None else 0

    def group_count(self, group: Hashable) -> int:
        """Places held by group."""
        held = self._by_group.get(group)
        return len(held) if held is not None else 0

    @property
    def largest(self) -> int:
        """Places held by the largest group."""
        return self._largest

    def admit(self, key: Hashable, address: Hashable, group: Hashable, *, displace_own: bool = False) -> list[Hashable]:
        """Give key a place; returns the keys displaced for it (raise Full when it gets none).

        An address of None has no share of its own (callers without an address,
        such as the command line, share the None group).
        """
        displaced: list[Hashable] = []
        if address is not None and self.address_count(address) >= self.per_address:
            if not displace_own:
                raise Full(f"{address} holds {self.per_address} places")
            displaced.append(self._drop_oldest(self._by_address[address]))
        if address is not None and self.group_count(group) >= self.per_group:
            if not displace_own:
                raise Full(f"{group} holds {self.per_group} places")
            displaced.append(self._drop_oldest(self._by_group[group]))
        if len(self._entries) >= self.capacity:
            own = self.group_count(group)
            if self._largest > own:
                victim = next(iter(self._buckets[self._largest]))
                displaced.append(self._drop_oldest(self._by_group[victim]))
            elif displace_own and own > 0:
                displaced.append(self._drop_oldest(self._by_group[group]))
            else:
                raise Full(f"{len(self._entries)} places taken")
        self._entries[key] = (address, group)
        if address is not None:
            self._by_address.setdefault(address, OrderedDict())[key] = None
        held = self._by_group.setdefault(group, OrderedDict())
        held[key] = None
        self._recount(group, len(held) - 1, len(held))
        return displaced

    def release(self, key: Hashable) -> bool:
        """Free key's place; False when it held none."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        address, group = entry
        if address is not None:
            by_address = self._by_address[address]
            del by_address[key]
            if not by_address:
                del self._by_address[address]
        held = self._by_group[group]
        del held[key]
        self._recount(group, len(held) + 1, len(held))
        if not held:
            del self._by_group[group]
        return True

    def _drop_oldest(self, keys: OrderedDict[Hashable, None]) -> Hashable:
        """Release the oldest of keys and return it."""
        key = next(iter(keys))
        self.release(key)
        return key

    def _recount(self, group: Hashable, old: int, new: int) -> None:
        """Move group from the bucket of count old to that of count new (they differ by one)."""
        if old:
            bucket = self._buckets[old]
            del bucket[group]
            if not bucket:
                del self._buckets[old]
        if new:
            self._buckets.setdefault(new, {})[group] = None
        if new > self._largest:
            self._largest = new
        elif old == self._largest and old not in self._buckets:
            self._largest = new


class AddressShares:
    """A privileged pool and a strangers' pool with per-address and per-prefix shares (see the module docstring)."""

    def __init__(
        self,
        capacity: int,
        per_address: int,
        per_prefix: int,
        *,
        known: KnownAddresses | None = None,
        trusted: Callable[[str], bool] | None = None,
        displace_own: bool = False,
    ) -> None:
        """Each pool holds capacity entries; trusted(address) says whether an address is in a trusted network."""
        self.known = known if known is not None else KnownAddresses()
        self.trusted = trusted
        self.displace_own = displace_own
        self.strangers = FairPool(capacity, per_address, per_prefix)
        self.privileged = FairPool(capacity, per_address, per_prefix)
        self._pool_of: dict[Hashable, FairPool] = {}

    def configure(
        self, *, capacity: int | None = None, per_address: int | None = None, per_prefix: int | None = None
    ) -> None:
        """Change the limits of both pools (entries already held are kept)."""
        for pool in (self.strangers, self.privileged):
            if capacity is not None:
                pool.capacity = capacity
            if per_address is not None:
                pool.per_address = per_address
            if per_prefix is not None:
                pool.per_group = per_prefix

    def classify(self, address: Any) -> tuple[FairPool, Hashable, Hashable]:
        """The pool, address key and group of a caller's address."""
        if not isinstance(address, str):
            return self.strangers, None, None
        parsed = address_and_prefix(address)
        if parsed is None:  # not an IP (a test client, a unix socket): a group of its own
            return self.strangers, address, ("address", address)
        canonical, prefix = parsed
        if canonical in self.known:
            return self.privileged, canonical, ("address", canonical)
        if self.trusted is not None and self.trusted(canonical):
            return self.privileged, canonical, prefix
        return self.strangers, canonical, prefix

    def admit(self, key: Hashable, address: Any) -> list[Hashable]:
        """Give key a place for a caller at address; returns displaced keys (raise Full when refused)."""
        if key in self._pool_of:
            raise ValueError(f"{key!r} already holds a place")
        pool, address_key, group = self.classify(address)
        displaced = pool.admit(key, address_key, group, displace_own=self.displace_own)
        for old in displaced:
            self._pool_of.pop(old, None)
        self._pool_of[key] = pool
        return displaced

    def release(self, key: Hashable) -> bool:
        """Free key's place; False when it held none."""
        pool = self._pool_of.pop(key, None)
        return pool is not None and pool.release(key)

    def __contains__(self, key: object) -> bool:
        """Whether key holds a place."""
        return key in self._pool_of

    def __len__(self) -> int:
        """Places held in both pools."""
        return len(self._pool_of)


def network_checker(networks: Iterable[Any]) -> Callable[[str], bool] | None:
    """A fast 'is this canonical address in one of networks' test; None when there are none."""
    parsed = parse_networks(networks)
    if not parsed:
        return None
    return lambda address: in_networks(address, parsed)
