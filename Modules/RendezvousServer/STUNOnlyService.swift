import Addressing
import MonotonicTime
import NIOCore
import STUN
import Transport

/// The driver of the server's alternate port: it only answers STUN Binding requests, so a
/// client can compare the mapping it gets here with the one at the main port (RFC 5780).
public final class STUNOnlyService: DatagramDriver {
    public private(set) var answered = 0

    public init() {}

    public func receive(_ payload: ByteBuffer, from source: Endpoint, now: Instant, output: inout DatagramOutput) {
        let bytes = Array(payload.readableBytesView)
        if let legacyID = STUN.legacyBindingRequestID(bytes) {
            answered += 1
            output.send(STUN.legacyBindingSuccess(id: legacyID, mapped: source), to: source)
            return
        }
        guard case .bindingRequest(let transaction) = try? STUN.decode(bytes) else { return }
        answered += 1
        output.send(STUN.bindingSuccess(transaction, mapped: source), to: source)
    }

    public func timeout(now: Instant, output: inout DatagramOutput) {}
    public func nextDeadline() -> Instant? { nil }
}
