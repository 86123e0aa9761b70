import Addressing
import Identity
import MonotonicTime
import Wire

// The in-place paths: the server's commonest datagrams (keep-alives, relay requests) read
// straight from the receive buffer, with the general path's rules, allocating nothing.

extension Registry {
    /// Acknowledges an authenticated keep-alive read in place from the receive buffer, when
    /// it changes nothing but liveness: it comes from the endpoint the client registered at,
    /// with the same NAT kind, a valid tag and a fresh counter. That is nearly every datagram a
    /// busy server gets (each client, every 10 s), and this path allocates nothing.
    ///
    /// Returns `false`, having changed nothing, for anything else; decode the datagram then
    /// and hand it to ``receive(_:bytes:from:now:random:)``, which handles every case
    /// (moves, replays, unknown sessions) with the same rules.
    public mutating func acknowledgeKeepAlive(_ datagram: UnsafeRawBufferPointer, from source: Endpoint, now: Instant) -> Bool {
        guard let frame = ExtendedMessage.KeepAliveFrame(datagram),
              let index = registeredIndex(idBytes: frame.idBytes, at: source)
        else { return false }
        let entry = entries[position: index]
        guard entry.dialect == .extended, entry.publicEndpoint == source, entry.natKind == frame.natKind,
              entry.mappedEndpoint == Self.acceptableMapping(frame.mappedEndpoint, publicAddress: source.address),
              frame.counter > entry.lastCounter, let mac = entry.sessionMAC,
              mac.isValid(frame.tag, for: frame.authenticated)
        else { return false }
        entries.setLastCounter(frame.counter, at: index)
        liveness.touch(entry.id, now: now)
        return true
    }

    /// Where the entry whose ID is `idBytes` (as received) is, if one is; the callers then
    /// check that it is registered at `source`. The endpoint's own extended client is tried
    /// first (hashing six bytes); several IDs registered from one socket, as a load
    /// generator's clients are, are found by ID.
    func registeredIndex(idBytes: UnsafeRawBufferPointer, at source: Endpoint) -> Int? {
        if let id = extendedByEndpoint[source], id.rawValue.utf8.elementsEqual(idBytes) { return entries.position(of: id) }
        return entries.position(idBytes: idBytes)
    }

    /// What ``forwardRelay(_:from:now:)`` decided.
    public enum RelayDecision: Hashable, Sendable {
        /// Send the ``ExtendedMessage/relayed(from:payload:)`` datagram here.
        case forward(to: Endpoint)
        /// An authentic request over the relay limit: dropped (the counter is spent).
        case rateLimited
        /// Not decided here: decode the datagram and use the general path.
        case useGeneralPath
    }

    /// Checks and accounts a relay request read in place: the sender is at its registered
    /// endpoint with a valid tag and a fresh counter, and the peer is a registered extended
    /// client. Records the counter and the relay budget and allocates nothing; the caller
    /// writes the relayed datagram (``ExtendedMessage/RelayFrame/writeRelayed(into:)``).
    ///
    /// Anything else is ``RelayDecision/useGeneralPath``, with nothing changed: decode the
    /// datagram then and hand it to ``receive(_:bytes:from:now:random:)``, which answers
    /// every case with the same rules.
    public mutating func forwardRelay(_ frame: ExtendedMessage.RelayFrame, from source: Endpoint, now: Instant) -> RelayDecision {
        guard let index = registeredIndex(idBytes: frame.idBytes, at: source) else { return .useGeneralPath }
        let entry = entries[position: index]
        guard entry.dialect == .extended, entry.publicEndpoint == source, frame.counter > entry.lastCounter,
              let mac = entry.sessionMAC, mac.isValid(frame.tag, for: frame.authenticated),
              let peerPosition = entries.position(idBytes: frame.toBytes),
              case let peer = entries[position: peerPosition], peer.dialect == .extended, peer.isLocal
        else { return .useGeneralPath }
        entries.setLastCounter(frame.counter, at: index)
        guard relayLimiter.allow(entry.id, bytes: frame.payload.count, now: now) else { return .rateLimited }
        return .forward(to: peer.publicEndpoint)
    }
}
