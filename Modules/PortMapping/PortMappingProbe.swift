import Addressing
import MonotonicTime

/// `natchat --probe`'s question to the gateway: does it answer PCP, NAT-PMP? Creates nothing:
/// a PCP ANNOUNCE (RFC 6887 §14.1) and a NAT-PMP external address request (RFC 6886 §3.2),
/// both sent at once and retransmitted on the ``PortMappingClient/Configuration/retransmits``
/// schedule, like tailscale netcheck's `PortMapping:` line. UPnP is the driver's (SSDP).
public struct PortMappingProbe: Sendable, SansIOCore {
    /// What the owner should do.
    public enum Output: Hashable, Sendable {
        /// Send these bytes to the gateway.
        case send([UInt8], to: Endpoint)
        /// The probe is over: the protocols that answered.
        case settled(Set<MappingProtocol>)
    }

    /// The gateway's port 5351.
    public let server: Endpoint
    private let clientAddress: IPv4Address
    private let waits: [Duration]
    private var sent = 0
    private var nextSend: Instant?
    private var answered: Set<MappingProtocol> = []
    private var pending: Set<MappingProtocol> = [.pcp, .natpmp]
    private var done = false

    /// - Parameters:
    ///   - gateway: the default route's gateway.
    ///   - clientAddress: our LAN address (the PCP header carries it).
    ///   - retransmits: the waits after each sending; the probe settles after the last.
    public init(gateway: IPv4Address, clientAddress: IPv4Address,
                retransmits: [Duration] = [.milliseconds(250), .milliseconds(500), .seconds(1)]) {
        server = Endpoint(address: gateway, port: portMappingServerPort)
        self.clientAddress = clientAddress
        waits = retransmits.isEmpty ? [.seconds(1)] : retransmits
    }

    /// When ``handleTimeout(now:)`` is next needed.
    public var nextDeadline: Instant? { done ? nil : nextSend }

    /// The first requests.
    public mutating func start(now: Instant) -> [Output] {
        guard sent == 0, !done else { return [] }
        return handleTimeout(now: now)
    }

    /// Resends what is unanswered; after the last wait, the outcome.
    public mutating func handleTimeout(now: Instant) -> [Output] {
        guard !done else { return [] }
        if let due = nextSend, now < due { return [] }
        guard sent < waits.count else { return [settle()] }
        nextSend = now + waits[sent]
        sent += 1
        var out: [Output] = []
        if pending.contains(.pcp) { out.append(.send(PCP.announceRequest(clientAddress: clientAddress), to: server)) }
        if pending.contains(.natpmp) { out.append(.send(NATPMP.externalAddressRequest(), to: server)) }
        return out
    }

    /// An answer from `source` (others are ignored); the outcome once both protocols answered.
    public mutating func handleReceive(_ bytes: [UInt8], from source: Endpoint, now: Instant) -> [Output] {
        guard !done, source == server, let version = bytes.first else { return [] }
        if version == PCP.version, let response = try? PCP.decodeResponse(bytes) {
            let header: PCP.ResponseHeader
            switch response {
            case .header(let value): header = value
            case .map(let map): header = map.header
            }
            pending.remove(.pcp)
            if header.result != .unsupportedVersion { answered.insert(.pcp) }
        } else if version == NATPMP.version, let response = try? NATPMP.decodeResponse(bytes) {
            // A NAT-PMP server answers the PCP request with "unsupported version" (opcode 128
            // as well): that says NAT-PMP is there and PCP is not.
            answered.insert(.natpmp)
            if response.result == NATPMP.resultUnsupportedVersion {
                pending.remove(.pcp)
            } else {
                pending.remove(.natpmp)
            }
        } else {
            return []
        }
        return pending.isEmpty ? [settle()] : []
    }

    private mutating func settle() -> Output {
        done = true
        return .settled(answered)
    }
}
