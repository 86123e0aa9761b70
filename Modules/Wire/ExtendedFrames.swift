import Addressing

// The server's commonest datagrams, read and written in place (no allocation): keep-alives
// and their acknowledgements, relay requests and the relayed datagrams. They read every field
// through the same ``WireReader`` methods and field readers (`KeepAliveFields`,
// `RelayFields`, the session trailer) as ``ExtendedDatagram/decode(_:)``, so the two cannot
// disagree on a layout.

extension ExtendedMessage {
    /// The encoded length of ``keepAliveAck(publicEndpoint:)``: magic, version, kind, endpoint.
    public static var keepAliveAckLength: Int { 9 }
    /// The kind byte of ``keepAliveAck(publicEndpoint:)``, for writers that build it in place.
    public static var keepAliveAckKind: UInt8 { Kind.keepAliveAck.rawValue }

    /// Writes ``keepAliveAck(publicEndpoint:)`` (``keepAliveAckLength`` bytes) at the start of
    /// `destination` in one pass, for a server that answers into a buffer it already has.
    /// Returns the number of bytes written, 0 when `destination` is too short.
    public static func writeKeepAliveAck(publicEndpoint: Endpoint, into destination: UnsafeMutableRawBufferPointer) -> Int {
        guard destination.count >= keepAliveAckLength, let base = destination.baseAddress else { return 0 }
        base.storeBytes(of: magic, toByteOffset: 0, as: UInt8.self)
        base.storeBytes(of: version, toByteOffset: 1, as: UInt8.self)
        base.storeBytes(of: keepAliveAckKind, toByteOffset: 2, as: UInt8.self)
        base.storeBytes(of: publicEndpoint.address.bits.bigEndian, toByteOffset: 3, as: UInt32.self)
        base.storeBytes(of: publicEndpoint.port.bigEndian, toByteOffset: 7, as: UInt16.self)
        return keepAliveAckLength
    }

    /// The parts of a session-authenticated datagram read in place: what the tag covers, the
    /// counter, the tag.
    static func readSessionTrailer(_ r: inout WireReader) throws(WireError) -> (authenticated: UnsafeRawBufferPointer, counter: UInt64,
                                                                                tag: Token128) {
        guard case .session(let counter, let tag) = try ExtendedDatagram.readTrailer(.session, &r) else {
            throw .malformed("no session trailer")
        }
        try r.expectEnd()
        let authenticated = UnsafeRawBufferPointer(rebasing: r.bytes[..<(r.bytes.count - 16)])
        return (authenticated, counter, tag)
    }

    /// One encoded ``keepAlive(id:natKind:)`` datagram, read in place without allocating (the
    /// server's commonest datagram). It accepts exactly what ``ExtendedDatagram/decode(_:)``
    /// accepts as a keep-alive, except that the ID's characters are not checked: ``idBytes``
    /// is only compared with a registered ID.
    public struct KeepAliveFrame {
        /// The ID's UTF-8 bytes; valid while the datagram's memory is.
        public let idBytes: UnsafeRawBufferPointer
        public let natKind: NATKind
        /// A port mapping's external endpoint, when the client reports one.
        public let mappedEndpoint: Endpoint?
        public let counter: UInt64
        /// Everything but the trailing tag: what the tag covers.
        public let authenticated: UnsafeRawBufferPointer
        public let tag: Token128

        /// `nil` unless `datagram` is one whole keep-alive.
        public init?(_ datagram: UnsafeRawBufferPointer) {
            guard datagram.count >= 3, datagram[2] == Kind.keepAlive.rawValue else { return nil }
            var r = WireReader(datagram)
            guard (try? readHeader(&r)) == .keepAlive,
                  let fields = try? KeepAliveFields(&r),
                  let trailer = try? readSessionTrailer(&r)
            else { return nil }
            idBytes = fields.idBytes
            natKind = fields.natKind
            mappedEndpoint = fields.mappedEndpoint
            counter = trailer.counter
            authenticated = trailer.authenticated
            tag = trailer.tag
        }
    }

    /// One encoded ``relay(id:to:payload:)`` datagram, read in place without allocating. It
    /// accepts exactly the frames ``ExtendedDatagram/decode(_:)`` accepts as a relay request,
    /// except that the IDs' characters are not checked (they are only looked up).
    public struct RelayFrame {
        public let idBytes: UnsafeRawBufferPointer
        public let toBytes: UnsafeRawBufferPointer
        public let payload: UnsafeRawBufferPointer
        public let counter: UInt64
        /// Everything but the trailing tag: what the tag covers.
        public let authenticated: UnsafeRawBufferPointer
        public let tag: Token128

        /// `nil` unless `datagram` is one whole relay request.
        public init?(_ datagram: UnsafeRawBufferPointer) {
            guard datagram.count >= 3, datagram[2] == Kind.relay.rawValue else { return nil }
            var r = WireReader(datagram)
            guard (try? readHeader(&r)) == .relay,
                  let fields = try? RelayFields(&r),
                  let trailer = try? readSessionTrailer(&r)
            else { return nil }
            idBytes = fields.idBytes
            toBytes = fields.toBytes
            payload = fields.payload
            counter = trailer.counter
            authenticated = trailer.authenticated
            tag = trailer.tag
        }

        /// The length of the ``relayed(from:payload:)`` datagram the server forwards.
        public var relayedLength: Int { 3 + 1 + idBytes.count + 2 + payload.count }

        /// Writes that ``relayed(from:payload:)`` datagram (the sender's ID and the payload)
        /// at the start of `destination` in one pass; returns the number of bytes written,
        /// ``relayedLength``, or 0 when `destination` is too short.
        public func writeRelayed(into destination: UnsafeMutableRawBufferPointer) -> Int {
            let length = relayedLength
            guard destination.count >= length, let base = destination.baseAddress else { return 0 }
            base.storeBytes(of: ExtendedMessage.magic, toByteOffset: 0, as: UInt8.self)
            base.storeBytes(of: ExtendedMessage.version, toByteOffset: 1, as: UInt8.self)
            base.storeBytes(of: Kind.relayed.rawValue, toByteOffset: 2, as: UInt8.self)
            base.storeBytes(of: UInt8(idBytes.count), toByteOffset: 3, as: UInt8.self)
            var offset = 4
            if let id = idBytes.baseAddress { (base + offset).copyMemory(from: id, byteCount: idBytes.count) }
            offset += idBytes.count
            base.storeBytes(of: UInt16(truncatingIfNeeded: payload.count).bigEndian, toByteOffset: offset, as: UInt16.self)
            offset += 2
            if let bytes = payload.baseAddress { (base + offset).copyMemory(from: bytes, byteCount: payload.count) }
            return length
        }
    }
}
