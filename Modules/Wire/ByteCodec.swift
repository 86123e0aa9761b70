import Addressing

/// A big-endian (network order) byte writer for the binary dialects.
public struct WireWriter: Sendable {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public mutating func u8(_ value: UInt8) { bytes.append(value) }
    public mutating func u16(_ value: UInt16) { bytes.append(UInt8(value >> 8)); bytes.append(UInt8(truncatingIfNeeded: value)) }
    public mutating func u32(_ value: UInt32) {
        u16(UInt16(value >> 16))
        u16(UInt16(truncatingIfNeeded: value))
    }
    public mutating func u64(_ value: UInt64) {
        u32(UInt32(value >> 32))
        u32(UInt32(truncatingIfNeeded: value))
    }
    public mutating func raw(_ data: some Sequence<UInt8>) { bytes.append(contentsOf: data) }

    /// One length byte, then the bytes (at most 255).
    public mutating func shortBytes(_ data: [UInt8]) {
        u8(UInt8(min(data.count, 255)))
        bytes.append(contentsOf: data.prefix(255))
    }

    /// Two length bytes, then the bytes (at most 65535).
    public mutating func longBytes(_ data: some Collection<UInt8>) {
        u16(UInt16(min(data.count, 65535)))
        bytes.append(contentsOf: data.prefix(65535))
    }

    public mutating func endpoint(_ endpoint: Endpoint) {
        u32(endpoint.address.bits)
        u16(endpoint.port)
    }

    public mutating func clientID(_ id: ClientID) { shortBytes(Array(id.rawValue.utf8)) }
}

/// Reads what ``WireWriter`` wrote, in place: a cursor over bytes it does not own (valid
/// while they are, as inside `withUnsafeBytes`). It never copies unless asked to (``array(_:_:)``,
/// ``clientID()``), never allocates on success, and never traps: a datagram cut short or
/// a field out of its bounds throws ``WireError/malformed(_:)``.
///
/// It is the one reading of every field of the binary dialects: the full decoders and the
/// server's in-place readers of its commonest datagrams (``ExtendedMessage/KeepAliveFrame``,
/// ``ExtendedMessage/RelayFrame``) go through the same methods.
public struct WireReader {
    public let bytes: UnsafeRawBufferPointer
    public private(set) var offset: Int

    public init(_ bytes: UnsafeRawBufferPointer, offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    public var remaining: Int { bytes.count - offset }
    public var isAtEnd: Bool { offset >= bytes.count }
    /// The bytes read so far.
    public var consumed: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: bytes[..<offset]) }

    public mutating func u8(_ field: StaticString = "byte") throws(WireError) -> UInt8 {
        guard offset < bytes.count else { throw .malformed("truncated \(field)") }
        defer { offset += 1 }
        return bytes[offset]
    }

    public mutating func u16(_ field: StaticString = "u16") throws(WireError) -> UInt16 {
        guard remaining >= 2 else { throw .malformed("truncated \(field)") }
        defer { offset += 2 }
        return UInt16(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    public mutating func u32(_ field: StaticString = "u32") throws(WireError) -> UInt32 {
        guard remaining >= 4 else { throw .malformed("truncated \(field)") }
        defer { offset += 4 }
        return UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    public mutating func u64(_ field: StaticString = "u64") throws(WireError) -> UInt64 {
        guard remaining >= 8 else { throw .malformed("truncated \(field)") }
        defer { offset += 8 }
        return UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    /// The next `count` bytes, in place.
    public mutating func raw(_ count: Int, _ field: StaticString = "bytes") throws(WireError) -> UnsafeRawBufferPointer {
        guard count >= 0, remaining >= count else { throw .malformed("truncated \(field)") }
        defer { offset += count }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count])
    }

    /// The next `count` bytes, copied.
    public mutating func array(_ count: Int, _ field: StaticString = "bytes") throws(WireError) -> [UInt8] {
        Array(try raw(count, field))
    }

    /// One length byte, then that many bytes (in place).
    public mutating func shortBytes(_ field: StaticString = "bytes") throws(WireError) -> UnsafeRawBufferPointer {
        try raw(Int(try u8(field)), field)
    }

    /// Two length bytes, then that many bytes (in place).
    public mutating func longBytes(_ field: StaticString = "bytes") throws(WireError) -> UnsafeRawBufferPointer {
        try raw(Int(try u16(field)), field)
    }

    public mutating func endpoint() throws(WireError) -> Endpoint {
        let address = try u32("address")
        let port = try u16("port")
        return Endpoint(address: IPv4Address(bits: address), port: port)
    }

    /// A client ID's bytes as received, with only its length checked (1–32): what the
    /// in-place readers compare with registered IDs.
    public mutating func clientIDBytes() throws(WireError) -> UnsafeRawBufferPointer {
        let bytes = try shortBytes("client ID")
        guard bytes.count >= 1, bytes.count <= ClientID.maxUTF8Length else { throw .malformed("bad client ID length") }
        return bytes
    }

    /// A client ID, checked against the ID rules.
    public mutating func clientID() throws(WireError) -> ClientID {
        try ClientID(utf8: try shortBytes("client ID"))
    }

    /// Throws unless every byte was read: trailing garbage is an error, not ignored.
    public func expectEnd() throws(WireError) {
        guard isAtEnd else { throw .malformed("\(remaining) trailing bytes") }
    }
}

extension ClientID {
    /// An ID from its UTF-8 bytes, checked against the rules.
    public init(utf8 bytes: UnsafeRawBufferPointer) throws(WireError) {
        guard let text = String(validating: bytes, as: UTF8.self) else { throw .invalidUTF8 }
        try self.init(decoding: text)
    }
}
