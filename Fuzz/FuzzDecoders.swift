// libFuzzer target for every datagram decoder natchat has: classic text, extended
// binary, STUN. Built by bin/fuzz with `swiftc -sanitize=fuzzer,address` from the
// Addressing, Wire and STUN sources (no SwiftPM: libFuzzer needs its own main).
//
// Properties checked on every input:
// - no decoder traps (a crash is a libFuzzer finding);
// - whatever decodes re-encodes to bytes that decode to the same message;
// - the in-place keep-alive and relay readers accept exactly what the decoder accepts
//   (except the ID's characters, which they do not check: an ID with a forbidden character
//   is the one input they may take and the decoder refuse).

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let message = try? ClassicMessage.decode(bytes) {
        guard (try? ClassicMessage.decode(message.encode())) == message else { fatalError("classic round trip: \(message)") }
    }
    if let datagram = try? ExtendedDatagram.decode(bytes) {
        guard (try? ExtendedDatagram.decode(datagram.encode())) == datagram else { fatalError("extended round trip: \(datagram)") }
        // The in-place readers accept exactly what the decoder accepts, for their kinds.
        bytes.withUnsafeBytes { raw in
            if case .keepAlive = datagram.message, ExtendedMessage.KeepAliveFrame(raw) == nil { fatalError("keep-alive frame refused") }
            if case .relay = datagram.message, ExtendedMessage.RelayFrame(raw) == nil { fatalError("relay frame refused") }
        }
    } else {
        // A frame the decoder refuses can only be one whose ID breaks the ID rules.
        bytes.withUnsafeBytes { raw in
            if let frame = ExtendedMessage.KeepAliveFrame(raw), (try? ClientID(utf8: frame.idBytes)) != nil {
                fatalError("keep-alive frame the decoder refuses")
            }
            if let frame = ExtendedMessage.RelayFrame(raw), (try? ClientID(utf8: frame.idBytes)) != nil,
               (try? ClientID(utf8: frame.toBytes)) != nil {
                fatalError("relay frame the decoder refuses")
            }
        }
    }
    if let message = try? STUN.decode(bytes) {
        switch message {
        case .bindingRequest(let transaction):
            guard (try? STUN.decode(STUN.bindingRequest(transaction))) == message else { fatalError("STUN request round trip") }
        case .bindingSuccess(let transaction, let mapped):
            guard (try? STUN.decode(STUN.bindingSuccess(transaction, mapped: mapped))) == message else { fatalError("STUN response round trip") }
        case .other:
            break
        }
    }
    _ = STUN.looksLikeSTUN(bytes)
    _ = ExtendedMessage.trailerLength(ofEncoded: bytes)
    return 0
}
