// libFuzzer target for every datagram decoder natchat has: classic text, extended
// binary, STUN. Built by bin/fuzz with `swiftc -sanitize=fuzzer,address` from the
// Wire and STUN sources (no SwiftPM: libFuzzer needs its own main).
//
// Properties checked on every input:
// - no decoder traps (a crash is a libFuzzer finding);
// - whatever decodes re-encodes to bytes that decode to the same message.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let message = try? ClassicMessage.decode(bytes) {
        guard (try? ClassicMessage.decode(message.encode())) == message else { fatalError("classic round trip: \(message)") }
    }
    if let message = try? ExtendedMessage.decode(bytes) {
        guard (try? ExtendedMessage.decode(message.encode())) == message else { fatalError("extended round trip: \(message)") }
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
