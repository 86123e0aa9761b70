import Addressing

/// The protocols a gateway may offer to open a port for us, in the order natchat asks them.
public enum MappingProtocol: String, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    /// Port Control Protocol, RFC 6887 (UDP port 5351, version 2).
    case pcp = "PCP"
    /// NAT Port Mapping Protocol, RFC 6886 (UDP port 5351, version 0).
    case natpmp = "NAT-PMP"
    /// UPnP Internet Gateway Device (SSDP, then SOAP over HTTP): driven by miniupnpc, not here.
    case upnp = "UPnP"

    public var description: String { rawValue }
}

/// A mapping the gateway granted: datagrams to ``external`` reach our ``internalPort``.
public struct Mapping: Hashable, Sendable, CustomStringConvertible {
    /// The protocol that granted it.
    public var via: MappingProtocol
    /// Our socket's port on the LAN.
    public var internalPort: UInt16
    /// The gateway's public side of the mapping. Behind a carrier-grade NAT this is the
    /// CGN-side address (100.64.0.0/10), reachable only from inside the carrier's network.
    public var external: Endpoint
    /// How long the gateway keeps it, counted from the answer.
    public var lifetimeSeconds: UInt32

    /// A mapping granted by `via`.
    public init(via: MappingProtocol, internalPort: UInt16, external: Endpoint, lifetimeSeconds: UInt32) {
        self.via = via
        self.internalPort = internalPort
        self.external = external
        self.lifetimeSeconds = lifetimeSeconds
    }

    /// `PCP 203.0.113.5:10081 for 7200 s`.
    public var description: String { "\(via) \(external) for \(lifetimeSeconds) s" }
}

/// Why bytes from the gateway were refused. Every decoder throws this; none traps.
public enum PortMappingDecodeError: Error, Hashable, Sendable {
    /// Fewer bytes than the message needs.
    case truncated(needed: Int, got: Int)
    /// A version this decoder does not read.
    case unexpectedVersion(UInt8)
    /// A request where a response was expected, or an opcode that is not the one decoded.
    case unexpectedOpcode(UInt8)
    /// An address field that is not an IPv4-mapped IPv6 address.
    case notIPv4Mapped
}

/// The UDP port PCP and NAT-PMP servers listen on (RFC 6887 §19.1, RFC 6886 §3.1).
public let portMappingServerPort: UInt16 = 5351

/// A small big-endian reader that throws instead of trapping.
struct ByteReader {
    let bytes: [UInt8]
    var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func need(_ count: Int) throws(PortMappingDecodeError) {
        if bytes.count - offset < count { throw .truncated(needed: offset + count, got: bytes.count) }
    }

    mutating func u8() throws(PortMappingDecodeError) -> UInt8 {
        try need(1)
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func u16() throws(PortMappingDecodeError) -> UInt16 {
        try need(2)
        defer { offset += 2 }
        return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    mutating func u32() throws(PortMappingDecodeError) -> UInt32 {
        try need(4)
        defer { offset += 4 }
        return UInt32(bytes[offset]) << 24 | UInt32(bytes[offset + 1]) << 16 | UInt32(bytes[offset + 2]) << 8 | UInt32(bytes[offset + 3])
    }

    mutating func take(_ count: Int) throws(PortMappingDecodeError) -> [UInt8] {
        try need(count)
        defer { offset += count }
        return Array(bytes[offset..<offset + count])
    }

    /// A 16-byte IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
    mutating func mappedIPv4() throws(PortMappingDecodeError) -> IPv4Address {
        let raw = try take(16)
        guard raw[0..<10].allSatisfy({ $0 == 0 }), raw[10] == 0xFF, raw[11] == 0xFF else { throw .notIPv4Mapped }
        return IPv4Address(raw[12], raw[13], raw[14], raw[15])
    }
}

extension Array where Element == UInt8 {
    mutating func put16(_ value: UInt16) { append(contentsOf: [UInt8(value >> 8), UInt8(value & 0xFF)]) }
    mutating func put32(_ value: UInt32) {
        append(contentsOf: [UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)])
    }
    mutating func putMapped(_ address: IPv4Address) {
        append(contentsOf: [UInt8](repeating: 0, count: 10) + [0xFF, 0xFF])
        put32(address.bits)
    }
}

/// PCP (RFC 6887) messages: the MAP request and response for UDP, and ANNOUNCE (the probe).
public enum PCP {
    /// The protocol version (RFC 6887 §7).
    public static let version: UInt8 = 2
    /// Opcodes (RFC 6887 §19.2).
    public static let opcodeAnnounce: UInt8 = 0
    /// MAP: ask for an inbound mapping.
    public static let opcodeMap: UInt8 = 1
    /// IANA protocol number of UDP, the MAP request's protocol field.
    public static let protocolUDP: UInt8 = 17

    /// A 96-bit mapping nonce (RFC 6887 §11.1): ties responses, renewals and the deletion to
    /// the mapping that made them.
    public struct Nonce: Hashable, Sendable {
        /// The 12 bytes.
        public let bytes: [UInt8]

        /// `bytes` must be 12 bytes; other lengths are padded or cut to 12.
        public init(bytes: [UInt8]) {
            self.bytes = Array((bytes + [UInt8](repeating: 0, count: 12)).prefix(12))
        }

        /// A fresh random nonce.
        public static func random<G: RandomNumberGenerator>(using generator: inout G) -> Nonce {
            Nonce(bytes: (0..<12).map { _ in UInt8.random(in: 0...255, using: &generator) })
        }
    }

    /// Result codes (RFC 6887 §7.4).
    public enum ResultCode: Hashable, Sendable, CustomStringConvertible {
        case success, unsupportedVersion, notAuthorized, malformedRequest, unsupportedOpcode, unsupportedOption,
             malformedOption, networkFailure, noResources, unsupportedProtocol, userExceededQuota,
             cannotProvideExternal, addressMismatch, excessiveRemotePeers
        /// A code RFC 6887 does not name.
        case other(UInt8)

        /// The code's number on the wire.
        public init(_ value: UInt8) {
            let known: [ResultCode] = [.success, .unsupportedVersion, .notAuthorized, .malformedRequest, .unsupportedOpcode,
                                       .unsupportedOption, .malformedOption, .networkFailure, .noResources, .unsupportedProtocol,
                                       .userExceededQuota, .cannotProvideExternal, .addressMismatch, .excessiveRemotePeers]
            self = Int(value) < known.count ? known[Int(value)] : .other(value)
        }

        public var description: String {
            switch self {
            case .success: "SUCCESS"
            case .unsupportedVersion: "UNSUPP_VERSION"
            case .notAuthorized: "NOT_AUTHORIZED"
            case .malformedRequest: "MALFORMED_REQUEST"
            case .unsupportedOpcode: "UNSUPP_OPCODE"
            case .unsupportedOption: "UNSUPP_OPTION"
            case .malformedOption: "MALFORMED_OPTION"
            case .networkFailure: "NETWORK_FAILURE"
            case .noResources: "NO_RESOURCES"
            case .unsupportedProtocol: "UNSUPP_PROTOCOL"
            case .userExceededQuota: "USER_EX_QUOTA"
            case .cannotProvideExternal: "CANNOT_PROVIDE_EXTERNAL"
            case .addressMismatch: "ADDRESS_MISMATCH"
            case .excessiveRemotePeers: "EXCESSIVE_REMOTE_PEERS"
            case .other(let code): "result \(code)"
            }
        }
    }

    /// A MAP request for a UDP port (RFC 6887 §11.1): 24-byte header plus 36-byte opcode.
    public struct MapRequest: Hashable, Sendable {
        /// The mapping nonce, the same for the request, its renewals and its deletion.
        public var nonce: Nonce
        /// Seconds; 0 deletes the mapping.
        public var lifetime: UInt32
        /// Our own address on the LAN (the request's source address; the server checks it).
        public var clientAddress: IPv4Address
        /// The port to map on our side.
        public var internalPort: UInt16
        /// A suggestion the server may ignore; 0: no preference.
        public var suggestedExternalPort: UInt16
        /// A suggestion; `0.0.0.0`: no preference (sent as `::ffff:0.0.0.0`).
        public var suggestedExternalAddress: IPv4Address

        /// A MAP request for UDP; see the properties.
        public init(nonce: Nonce, lifetime: UInt32, clientAddress: IPv4Address, internalPort: UInt16,
                    suggestedExternalPort: UInt16, suggestedExternalAddress: IPv4Address = IPv4Address(bits: 0)) {
            self.nonce = nonce
            self.lifetime = lifetime
            self.clientAddress = clientAddress
            self.internalPort = internalPort
            self.suggestedExternalPort = suggestedExternalPort
            self.suggestedExternalAddress = suggestedExternalAddress
        }

        /// The 60 bytes on the wire.
        public func encode() -> [UInt8] {
            var out: [UInt8] = [PCP.version, PCP.opcodeMap, 0, 0]
            out.put32(lifetime)
            out.putMapped(clientAddress)
            out.append(contentsOf: nonce.bytes)
            out.append(contentsOf: [PCP.protocolUDP, 0, 0, 0])
            out.put16(internalPort)
            out.put16(suggestedExternalPort)
            out.putMapped(suggestedExternalAddress)
            return out
        }
    }

    /// An ANNOUNCE request (RFC 6887 §14.1): the header alone, lifetime 0. Used to ask
    /// whether a PCP server is there without creating anything.
    public static func announceRequest(clientAddress: IPv4Address) -> [UInt8] {
        var out: [UInt8] = [version, opcodeAnnounce, 0, 0]
        out.put32(0)
        out.putMapped(clientAddress)
        return out
    }

    /// A response's common header (RFC 6887 §7.2).
    public struct ResponseHeader: Hashable, Sendable {
        /// The opcode answered (the request's, without the response bit).
        public var opcode: UInt8
        /// The result code.
        public var result: ResultCode
        /// Seconds granted (for an error: how long the error is expected to last).
        public var lifetime: UInt32
        /// The server's epoch: seconds since its mapping state began (§8.5).
        public var epoch: UInt32

        /// A header with these fields.
        public init(opcode: UInt8, result: ResultCode, lifetime: UInt32, epoch: UInt32) {
            self.opcode = opcode
            self.result = result
            self.lifetime = lifetime
            self.epoch = epoch
        }
    }

    /// A MAP response (RFC 6887 §11.1).
    public struct MapResponse: Hashable, Sendable {
        /// The common response header.
        public var header: ResponseHeader
        /// The request's nonce, echoed.
        public var nonce: Nonce
        /// The IANA protocol number (17: UDP).
        public var protocolNumber: UInt8
        /// Our port, echoed.
        public var internalPort: UInt16
        /// The external port granted.
        public var assignedExternalPort: UInt16
        /// The external address granted.
        public var assignedExternalAddress: IPv4Address

        /// A MAP response with these fields.
        public init(header: ResponseHeader, nonce: Nonce, protocolNumber: UInt8, internalPort: UInt16,
                    assignedExternalPort: UInt16, assignedExternalAddress: IPv4Address) {
            self.header = header
            self.nonce = nonce
            self.protocolNumber = protocolNumber
            self.internalPort = internalPort
            self.assignedExternalPort = assignedExternalPort
            self.assignedExternalAddress = assignedExternalAddress
        }

        /// The bytes a server would send (tests build answers with it).
        public func encode() -> [UInt8] {
            var out: [UInt8] = [PCP.version, 0x80 | PCP.opcodeMap, 0, header.result.wireValue]
            out.put32(header.lifetime)
            out.put32(header.epoch)
            out.append(contentsOf: [UInt8](repeating: 0, count: 12))
            out.append(contentsOf: nonce.bytes)
            out.append(contentsOf: [protocolNumber, 0, 0, 0])
            out.put16(internalPort)
            out.put16(assignedExternalPort)
            out.putMapped(assignedExternalAddress)
            return out
        }
    }

    /// What a PCP server may answer: a MAP response, or a bare header (ANNOUNCE, or an error
    /// such as UNSUPP_VERSION whose opcode data the server could not fill).
    public enum Response: Hashable, Sendable {
        case map(MapResponse)
        case header(ResponseHeader)
    }

    /// Decodes a PCP response. A version-0 message (a NAT-PMP server's answer) throws
    /// `.unexpectedVersion(0)`.
    public static func decodeResponse(_ bytes: [UInt8]) throws(PortMappingDecodeError) -> Response {
        var reader = ByteReader(bytes)
        let version = try reader.u8()
        guard version == PCP.version else { throw .unexpectedVersion(version) }
        let rOpcode = try reader.u8()
        guard rOpcode & 0x80 != 0 else { throw .unexpectedOpcode(rOpcode) }
        _ = try reader.u8()
        let result = ResultCode(try reader.u8())
        let lifetime = try reader.u32()
        let epoch = try reader.u32()
        _ = try reader.take(12)
        let header = ResponseHeader(opcode: rOpcode & 0x7F, result: result, lifetime: lifetime, epoch: epoch)
        // An error answer may carry the request's opcode data or none (RFC 6887 §7.2).
        guard header.opcode == opcodeMap, bytes.count >= 60 else { return .header(header) }
        let nonce = Nonce(bytes: try reader.take(12))
        let protocolNumber = try reader.u8()
        _ = try reader.take(3)
        let internalPort = try reader.u16()
        let externalPort = try reader.u16()
        let externalAddress = try reader.mappedIPv4()
        return .map(MapResponse(header: header, nonce: nonce, protocolNumber: protocolNumber, internalPort: internalPort,
                                assignedExternalPort: externalPort, assignedExternalAddress: externalAddress))
    }
}

extension PCP.ResultCode {
    /// The code's number on the wire.
    public var wireValue: UInt8 {
        switch self {
        case .success: 0
        case .unsupportedVersion: 1
        case .notAuthorized: 2
        case .malformedRequest: 3
        case .unsupportedOpcode: 4
        case .unsupportedOption: 5
        case .malformedOption: 6
        case .networkFailure: 7
        case .noResources: 8
        case .unsupportedProtocol: 9
        case .userExceededQuota: 10
        case .cannotProvideExternal: 11
        case .addressMismatch: 12
        case .excessiveRemotePeers: 13
        case .other(let code): code
        }
    }
}

/// NAT-PMP (RFC 6886) messages: the external-address and UDP map requests and responses.
public enum NATPMP {
    /// The protocol version (RFC 6886 §3).
    public static let version: UInt8 = 0
    /// Opcode of the external address request.
    public static let opcodeExternalAddress: UInt8 = 0
    /// Opcode of a UDP mapping request.
    public static let opcodeMapUDP: UInt8 = 1
    /// RFC 6886 §3.5: result 1 is "unsupported version", the answer a NAT-PMP server gives
    /// to a PCP request.
    public static let resultUnsupportedVersion: UInt16 = 1

    /// The 2-byte external address request (RFC 6886 §3.2).
    public static func externalAddressRequest() -> [UInt8] { [version, opcodeExternalAddress] }

    /// A UDP mapping request (RFC 6886 §3.3); lifetime 0 and suggested port 0 delete it (§3.4).
    public static func mapRequest(internalPort: UInt16, suggestedExternalPort: UInt16, lifetime: UInt32) -> [UInt8] {
        var out: [UInt8] = [version, opcodeMapUDP, 0, 0]
        out.put16(internalPort)
        out.put16(suggestedExternalPort)
        out.put32(lifetime)
        return out
    }

    /// A NAT-PMP response.
    public enum Response: Hashable, Sendable {
        /// Opcode 128: the gateway's external address.
        case externalAddress(result: UInt16, epoch: UInt32, address: IPv4Address)
        /// Opcode 129: a UDP mapping.
        case mapUDP(result: UInt16, epoch: UInt32, internalPort: UInt16, externalPort: UInt16, lifetime: UInt32)
        /// An error answer to something else (for example a PCP request: result 1, unsupported version).
        case other(opcode: UInt8, result: UInt16)

        /// The result code.
        public var result: UInt16 {
            switch self {
            case .externalAddress(let result, _, _), .mapUDP(let result, _, _, _, _), .other(_, let result): result
            }
        }

        /// The bytes a server would send (tests build answers with it).
        public func encode() -> [UInt8] {
            switch self {
            case .externalAddress(let result, let epoch, let address):
                var out: [UInt8] = [NATPMP.version, 128]
                out.put16(result)
                out.put32(epoch)
                out.put32(address.bits)
                return out
            case .mapUDP(let result, let epoch, let internalPort, let externalPort, let lifetime):
                var out: [UInt8] = [NATPMP.version, 129]
                out.put16(result)
                out.put32(epoch)
                out.put16(internalPort)
                out.put16(externalPort)
                out.put32(lifetime)
                return out
            case .other(let opcode, let result):
                var out: [UInt8] = [NATPMP.version, opcode]
                out.put16(result)
                out.put32(0)
                return out
            }
        }
    }

    /// Decodes a NAT-PMP response; a PCP (version 2) message throws `.unexpectedVersion(2)`.
    public static func decodeResponse(_ bytes: [UInt8]) throws(PortMappingDecodeError) -> Response {
        var reader = ByteReader(bytes)
        let version = try reader.u8()
        guard version == NATPMP.version else { throw .unexpectedVersion(version) }
        let opcode = try reader.u8()
        guard opcode >= 128 else { throw .unexpectedOpcode(opcode) }
        let result = try reader.u16()
        switch opcode {
        case 128 where result == 0:
            let epoch = try reader.u32()
            return .externalAddress(result: result, epoch: epoch, address: IPv4Address(bits: try reader.u32()))
        case 129 where result == 0:
            let epoch = try reader.u32()
            let internalPort = try reader.u16()
            let externalPort = try reader.u16()
            return .mapUDP(result: result, epoch: epoch, internalPort: internalPort, externalPort: externalPort,
                           lifetime: try reader.u32())
        default:
            // Errors may come short (a server that does not know the opcode answers the header).
            return .other(opcode: opcode, result: result)
        }
    }
}
