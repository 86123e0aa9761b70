import Addressing

/// RFC 8489 STUN, as much as natchat needs: Binding requests and success responses with
/// XOR-MAPPED-ADDRESS (IPv4), so the rendezvous server answers standard STUN clients and
/// natchat asks any STUN server for its mapped address.
public enum STUN {
    public static let magicCookie: UInt32 = 0x2112_A442
    public static let headerLength = 20
    @usableFromInline static let bindingRequestType: UInt16 = 0x0001
    static let bindingSuccessType: UInt16 = 0x0101
    static let mappedAddress: UInt16 = 0x0001
    static let xorMappedAddress: UInt16 = 0x0020
    static let software: UInt16 = 0x8022
    /// RFC 5780 §7.2: asks the server to answer from its other IP address and/or port.
    static let changeRequest: UInt16 = 0x0003

    /// The 96-bit transaction ID.
    public struct TransactionID: Hashable, Sendable {
        public var high: UInt32
        public var low: UInt64

        public init(high: UInt32, low: UInt64) {
            self.high = high
            self.low = low
        }

        public static func random<G: RandomNumberGenerator>(using generator: inout G) -> TransactionID {
            TransactionID(high: UInt32(truncatingIfNeeded: generator.next()), low: generator.next())
        }
    }

    /// A decoded STUN message.
    public enum Message: Hashable, Sendable {
        case bindingRequest(TransactionID)
        case bindingSuccess(TransactionID, mapped: Endpoint)
        /// Any other well-formed STUN message (other methods or classes, IPv6 mappings).
        case other(type: UInt16, TransactionID)
    }

    /// Why bytes are not a STUN message.
    public enum DecodeError: Error, Hashable, Sendable {
        case notSTUN
        case truncated
        case badAttribute
    }

    /// A STUN header (RFC 8489, or RFC 3489's without the magic cookie), read in place.
    public struct Header: Hashable, Sendable {
        public let type: UInt16
        /// The attributes' length.
        public let length: Int
        /// Bytes 4–7 are RFC 8489's magic cookie (else this is an RFC 3489 message, whose
        /// 16-byte transaction ID starts there).
        public let hasMagicCookie: Bool
        /// Bytes 8–19: an RFC 8489 message's transaction ID.
        public let transaction: TransactionID

        /// The one reading of a STUN header, behind every test and decoder here: `nil` unless
        /// `bytes` hold at least a header, the top two bits are clear, and the length field is
        /// a multiple of 4 that accounts for exactly the rest of the datagram.
        @inlinable
        public init?(_ bytes: UnsafeRawBufferPointer) {
            guard bytes.count >= STUN.headerLength, bytes[0] & 0xC0 == 0 else { return nil }
            let head = UInt32(bigEndian: bytes.loadUnaligned(as: UInt32.self))
            let length = Int(head & 0xFFFF)
            guard length % 4 == 0, STUN.headerLength + length == bytes.count else { return nil }
            type = UInt16(head >> 16)
            self.length = length
            hasMagicCookie = UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self)) == STUN.magicCookie
            transaction = TransactionID(high: UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
                                        low: UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 12, as: UInt64.self)))
        }
    }

    /// Reads `bytes` in place when they are contiguous (arrays, slices, NIO's buffer views),
    /// else from a copy. Inlinable so a caller in another module gets it specialised for its
    /// collection (generic and unspecialised, such a read allocated).
    @inlinable
    static func withRaw<Bytes: Collection<UInt8>, Result>(_ bytes: Bytes, _ body: (UnsafeRawBufferPointer) -> Result) -> Result {
        if let result = bytes.withContiguousStorageIfAvailable({ body(UnsafeRawBufferPointer($0)) }) { return result }
        return Array(bytes).withUnsafeBytes(body)
    }

    /// Cheap test used to tell STUN from natchat's dialects on a shared port: a STUN header
    /// (``Header``) with RFC 8489's magic cookie.
    @inlinable
    public static func looksLikeSTUN<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> Bool {
        withRaw(bytes) { Header($0)?.hasMagicCookie == true }
    }

    public static func decode(_ input: [UInt8]) throws(DecodeError) -> Message {
        let parsed = input.withUnsafeBytes { raw -> Result<Message, DecodeError> in
            guard let header = Header(raw), header.hasMagicCookie else { return .failure(.notSTUN) }
            switch header.type {
            case bindingRequestType:
                return .success(.bindingRequest(header.transaction))
            case bindingSuccessType:
                do throws(DecodeError) {
                    guard let mapped = try mappedAddress(raw) else { return .success(.other(type: header.type, header.transaction)) }
                    return .success(.bindingSuccess(header.transaction, mapped: mapped))
                } catch {
                    return .failure(error)
                }
            default:
                return .success(.other(type: header.type, header.transaction))
            }
        }
        return try parsed.get()
    }

    /// The XOR-MAPPED-ADDRESS of a Binding success response, else its MAPPED-ADDRESS.
    private static func mappedAddress(_ raw: UnsafeRawBufferPointer) throws(DecodeError) -> Endpoint? {
        var offset = headerLength
        var mapped: Endpoint?
        var xorMapped: Endpoint?
        while offset + 4 <= raw.count {
            let attribute = UInt16(raw[offset]) << 8 | UInt16(raw[offset + 1])
            let length = Int(raw[offset + 2]) << 8 | Int(raw[offset + 3])
            let valueStart = offset + 4
            guard valueStart + length <= raw.count else { throw .truncated }
            let value = Array(raw[valueStart..<valueStart + length])[...]
            if attribute == xorMappedAddress || attribute == mappedAddress {
                if let endpoint = try parseAddress(value, xor: attribute == xorMappedAddress) {
                    if attribute == xorMappedAddress { xorMapped = endpoint } else { mapped = endpoint }
                }
            }
            offset = valueStart + (length + 3) / 4 * 4
        }
        return xorMapped ?? mapped
    }

    private static func parseAddress(_ value: ArraySlice<UInt8>, xor: Bool) throws(DecodeError) -> Endpoint? {
        guard value.count >= 4 else { throw .badAttribute }
        let start = value.startIndex
        guard value[start + 1] == 0x01 else { return nil } // IPv6 mappings are not used by natchat
        guard value.count >= 8 else { throw .badAttribute }
        var port = UInt16(value[start + 2]) << 8 | UInt16(value[start + 3])
        var address = UInt32(value[start + 4]) << 24 | UInt32(value[start + 5]) << 16
            | UInt32(value[start + 6]) << 8 | UInt32(value[start + 7])
        if xor {
            port ^= UInt16(magicCookie >> 16)
            address ^= magicCookie
        }
        return Endpoint(address: IPv4Address(bits: address), port: port)
    }

    /// If `bytes` are a Binding request, its transaction ID, read in place without copying
    /// or allocating (the server's hot path).
    @inlinable
    public static func bindingRequestTransaction(_ bytes: UnsafeRawBufferPointer) -> TransactionID? {
        guard let header = Header(bytes), header.hasMagicCookie, header.type == bindingRequestType else { return nil }
        return header.transaction
    }

    /// ``bindingRequestTransaction(_:)-(UnsafeRawBufferPointer)`` for any contiguous bytes.
    @inlinable
    public static func bindingRequestTransaction<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> TransactionID? {
        withRaw(bytes) { bindingRequestTransaction($0) }
    }

    /// An RFC 3489 ("classic STUN") Binding request has no magic cookie: its transaction ID
    /// is the 16 bytes after the length. Old clients (Debian's `stun`) still send these;
    /// RFC 8489 §12 says a server should answer them, with MAPPED-ADDRESS.
    public static func legacyBindingRequestID<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> [UInt8]? {
        withRaw(bytes) { raw in
            guard let header = Header(raw), !header.hasMagicCookie, header.type == bindingRequestType else { return nil }
            return Array(raw[4..<20])
        }
    }

    /// The RFC 3489 answer: Binding success with the 16-byte ID and MAPPED-ADDRESS.
    public static func legacyBindingSuccess(id: [UInt8], mapped: Endpoint) -> [UInt8] {
        var bytes: [UInt8] = [0x01, 0x01, 0x00, 0x0C]
        bytes += id.prefix(16)
        bytes += [0x00, 0x01, 0x00, 0x08, 0x00, 0x01, UInt8(mapped.port >> 8), UInt8(truncatingIfNeeded: mapped.port)]
        let (a, b, c, d) = mapped.address.octets
        bytes += [a, b, c, d]
        return bytes
    }

    /// The length of ``bindingSuccess(_:mapped:)``'s bytes.
    public static let bindingSuccessLength = 32

    /// Writes a Binding success response (``bindingSuccessLength`` bytes) at the start of
    /// `destination`, so a caller can fill a buffer it already has: no intermediate array,
    /// and one access to the buffer rather than one per field. Returns the number of bytes
    /// written: ``bindingSuccessLength``, or 0 when `destination` is shorter than that.
    public static func writeBindingSuccess(_ transaction: TransactionID, mapped: Endpoint,
                                           into destination: UnsafeMutableRawBufferPointer) -> Int {
        guard destination.count >= bindingSuccessLength, let base = destination.baseAddress else { return 0 }
        let xorPort = UInt32(mapped.port ^ UInt16(magicCookie >> 16))
        base.storeBytes(of: (UInt32(bindingSuccessType) << 16 | 12).bigEndian, toByteOffset: 0, as: UInt32.self)
        base.storeBytes(of: magicCookie.bigEndian, toByteOffset: 4, as: UInt32.self)
        base.storeBytes(of: transaction.high.bigEndian, toByteOffset: 8, as: UInt32.self)
        base.storeBytes(of: transaction.low.bigEndian, toByteOffset: 12, as: UInt64.self)
        base.storeBytes(of: (UInt32(xorMappedAddress) << 16 | 8).bigEndian, toByteOffset: 20, as: UInt32.self)
        base.storeBytes(of: (0x0001 << 16 | xorPort).bigEndian, toByteOffset: 24, as: UInt32.self)
        base.storeBytes(of: (mapped.address.bits ^ magicCookie).bigEndian, toByteOffset: 28, as: UInt32.self)
        return bindingSuccessLength
    }

    /// RFC 5780's CHANGE-REQUEST flags (§7.2).
    public struct ChangeRequest: Hashable, Sendable {
        /// Answer from the other IP address.
        public var changeIP: Bool
        /// Answer from the other port.
        public var changePort: Bool

        public init(changeIP: Bool = false, changePort: Bool) {
            self.changeIP = changeIP
            self.changePort = changePort
        }
    }

    /// A Binding request carrying CHANGE-REQUEST (RFC 5780 §7.2): the server is asked to send
    /// the answer from its other port (and/or address), which a NAT that filters by address
    /// and port does not let through.
    public static func bindingRequest(_ transaction: TransactionID, change: ChangeRequest) -> [UInt8] {
        var bytes = header(type: bindingRequestType, length: 8, transaction)
        let flags: UInt8 = (change.changeIP ? 0x04 : 0) | (change.changePort ? 0x02 : 0)
        bytes += [0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x00, flags]
        return bytes
    }

    /// If `bytes` are an RFC 8489 Binding request with a well-formed CHANGE-REQUEST attribute,
    /// its transaction and flags; `nil` otherwise (no attribute, another message, bad input).
    public static func changeRequest<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> (TransactionID, ChangeRequest)? {
        withRaw(bytes) { raw -> (TransactionID, ChangeRequest)? in
            guard let header = Header(raw), header.hasMagicCookie, header.type == bindingRequestType else { return nil }
            var offset = headerLength
            while offset + 4 <= raw.count {
                let attribute = UInt16(raw[offset]) << 8 | UInt16(raw[offset + 1])
                let length = Int(raw[offset + 2]) << 8 | Int(raw[offset + 3])
                let valueStart = offset + 4
                guard valueStart + length <= raw.count else { return nil }
                if attribute == changeRequest {
                    guard length == 4 else { return nil }
                    let flags = raw[valueStart + 3]
                    return (header.transaction, ChangeRequest(changeIP: flags & 0x04 != 0, changePort: flags & 0x02 != 0))
                }
                offset = valueStart + (length + 3) / 4 * 4
            }
            return nil
        }
    }

    /// A Binding request with no attributes.
    public static func bindingRequest(_ transaction: TransactionID) -> [UInt8] {
        var bytes = header(type: bindingRequestType, length: 0, transaction)
        bytes.reserveCapacity(headerLength)
        return bytes
    }

    /// A Binding success response carrying `mapped` as XOR-MAPPED-ADDRESS.
    public static func bindingSuccess(_ transaction: TransactionID, mapped: Endpoint) -> [UInt8] {
        var bytes = header(type: bindingSuccessType, length: 12, transaction)
        let port = mapped.port ^ UInt16(magicCookie >> 16)
        let address = mapped.address.bits ^ magicCookie
        bytes += [0x00, 0x20, 0x00, 0x08, 0x00, 0x01, UInt8(port >> 8), UInt8(truncatingIfNeeded: port),
                  UInt8(address >> 24), UInt8(truncatingIfNeeded: address >> 16),
                  UInt8(truncatingIfNeeded: address >> 8), UInt8(truncatingIfNeeded: address)]
        return bytes
    }

    private static func header(type: UInt16, length: UInt16, _ transaction: TransactionID) -> [UInt8] {
        var bytes: [UInt8] = [UInt8(type >> 8), UInt8(truncatingIfNeeded: type), UInt8(length >> 8),
                              UInt8(truncatingIfNeeded: length), 0x21, 0x12, 0xA4, 0x42]
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: transaction.high >> UInt32(shift))) }
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: transaction.low >> UInt64(shift))) }
        return bytes
    }
}
