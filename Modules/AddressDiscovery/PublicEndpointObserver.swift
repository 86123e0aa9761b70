import Addressing

/// Tracks this client's public endpoint as the rendezvous server reports it, and notices
/// when it changes (a NAT rebinding or reboot gave us a new mapping).
public struct PublicEndpointObserver: Hashable, Sendable {
    /// What a report changed.
    public enum Change: Hashable, Sendable {
        case learned(Endpoint)
        case moved(from: Endpoint, to: Endpoint)
        case unchanged
    }

    /// The endpoint last reported, if any.
    public private(set) var current: Endpoint?

    public init() {}

    /// Records a report from the server.
    public mutating func observe(_ reported: Endpoint) -> Change {
        defer { current = reported }
        guard let previous = current else { return .learned(reported) }
        return previous == reported ? .unchanged : .moved(from: previous, to: reported)
    }

    /// Whether our public and private addresses differ, i.e. a NAT sits between us and the server.
    public func isBehindNAT(privateAddress: IPv4Address) -> Bool? {
        current.map { $0.address != privateAddress }
    }
}
