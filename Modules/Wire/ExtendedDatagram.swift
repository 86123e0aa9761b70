/// One natchat/2 datagram as it travels: a message and the trailer that authenticates it.
///
/// This is the one framing layer of the dialect. Which trailer a message carries follows from
/// its kind (``ExtendedMessage/Authentication``); the trailer's proof (a tag or a signature)
/// covers every byte before it, the header and the counter included. This type reads and
/// writes trailers; checking a tag or a signature needs keys, and is `Identity`'s
/// `SessionCrypto`'s job.
public struct ExtendedDatagram: Hashable, Sendable {
    /// What follows the message.
    public enum Trailer: Hashable, Sendable {
        case none
        /// An Ed25519 signature over every byte before it (64 bytes).
        case signature([UInt8])
        /// The sender's session counter and a tag under the session key.
        case session(counter: UInt64, tag: Token128)
        /// A tag under the pair key.
        case pair(tag: Token128)

        /// The counter of a session trailer.
        public var counter: UInt64? {
            if case .session(let counter, _) = self { return counter }
            return nil
        }

        /// The tag of a session or pair trailer.
        public var tag: Token128? {
            switch self {
            case .session(_, let tag), .pair(let tag): tag
            case .none, .signature: nil
            }
        }
    }

    public var message: ExtendedMessage
    public var trailer: Trailer

    public init(_ message: ExtendedMessage, trailer: Trailer = .none) {
        self.message = message
        self.trailer = trailer
    }

    /// The datagram's bytes: the message, then the trailer (which must fit the message's kind:
    /// the decoder refuses anything else).
    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: 128)
        w.raw(message.encode())
        Self.write(trailer, into: &w)
        return w.bytes
    }

    static func write(_ trailer: Trailer, into w: inout WireWriter) {
        switch trailer {
        case .none:
            break
        case .signature(let signature):
            w.fixed(signature, 64)
        case .session(let counter, let tag):
            w.u64(counter)
            w.token(tag)
        case .pair(let tag):
            w.token(tag)
        }
    }

    /// Decodes a whole datagram: header, fields, and the trailer its kind calls for. Refuses
    /// (with a typed error) anything longer than ``ExtendedMessage/maxDatagramLength``, cut
    /// short, with a field out of bounds, or with bytes left over.
    public static func decode<Bytes: Collection<UInt8>>(_ input: Bytes) throws(WireError) -> ExtendedDatagram {
        if input.isEmpty { throw .empty }
        if input.count > ExtendedMessage.maxDatagramLength {
            throw .datagramTooLong(length: input.count, limit: ExtendedMessage.maxDatagramLength)
        }
        let bytes = input as? [UInt8] ?? Array(input)
        // `withUnsafeBytes` rethrows untyped errors: carry the typed one out in a Result.
        let result = bytes.withUnsafeBytes { raw -> Result<ExtendedDatagram, WireError> in
            do throws(WireError) {
                var r = WireReader(raw)
                let kind = try ExtendedMessage.readHeader(&r)
                let message = try ExtendedMessage.readBody(kind, &r)
                let trailer = try readTrailer(kind.authentication, &r)
                try r.expectEnd()
                return .success(ExtendedDatagram(message, trailer: trailer))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    static func readTrailer(_ authentication: ExtendedMessage.Authentication, _ r: inout WireReader) throws(WireError) -> Trailer {
        switch authentication {
        case .none: return .none
        case .signature: return .signature(try r.array(64, "signature"))
        case .session: return .session(counter: try r.u64("counter"), tag: try r.token())
        case .pair: return .pair(tag: try r.token())
        }
    }
}

extension ExtendedMessage {
    /// How many trailing bytes of an encoded datagram are the proof that authenticates the
    /// rest: 64 (a signature) for registrations, 16 (a tag) for session and pair messages,
    /// `nil` otherwise (or when the bytes are not a natchat/2 datagram of a known kind).
    public static func trailerLength(ofEncoded bytes: some Collection<UInt8>) -> Int? {
        guard bytes.count >= 3, bytes.first == magic else { return nil }
        return trailerLength(ofKind: bytes[bytes.index(bytes.startIndex, offsetBy: 2)])
    }

    /// ``trailerLength(ofEncoded:)`` from the kind byte (the third) alone: not generic, so a
    /// caller in another module holding raw bytes pays no generic dispatch or allocation.
    public static func trailerLength(ofKind kindByte: UInt8) -> Int? {
        guard let kind = Kind(rawValue: kindByte) else { return nil }
        let proof = kind.authentication.proofLength
        return proof == 0 ? nil : proof
    }
}
