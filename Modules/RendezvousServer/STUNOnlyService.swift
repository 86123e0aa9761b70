import Addressing
import MonotonicTime
import NIOCore
import STUN
import Transport

/// The driver of the server's alternate port: it only answers STUN Binding requests, so a
/// client can compare the mapping it gets here with the one at the main port (RFC 5780).
///
/// A request carrying CHANGE-REQUEST with the change-port flag (RFC 5780 §7.2) is answered
/// from the main port instead, through ``answerFromPrimary``: the answer reaches the client's
/// NAT from a port the client never sent to. A NAT that filters by address and port drops
/// it; one that accepts it into the router (no WAN firewall) keeps a conntrack entry that
/// makes it remap the client's next flow to the main port, which the client sees as a
/// changed mapping (``RemapProbe``, docs/nat-traversal.md). Change-IP is not offered (the
/// server has one address): such a request gets no answer, as RFC 5780 §6.1 allows a server
/// without a second address to refuse it.
public final class STUNOnlyService: DatagramDriver {
    public private(set) var answered = 0
    /// Answers sent from the main port for change-port requests.
    public private(set) var answeredFromPrimary = 0
    /// Sends a datagram from the main port (`nil`: change-port requests are not answered).
    let answerFromPrimary: (@Sendable ([UInt8], Endpoint) -> Void)?

    public init(answerFromPrimary: (@Sendable ([UInt8], Endpoint) -> Void)? = nil) {
        self.answerFromPrimary = answerFromPrimary
    }

    public func receive(_ payload: ByteBuffer, from source: Endpoint, now: Instant, output: inout DatagramOutput) {
        let bytes = Array(payload.readableBytesView)
        if let legacyID = STUN.legacyBindingRequestID(bytes) {
            answered += 1
            output.send(STUN.legacyBindingSuccess(id: legacyID, mapped: source), to: source)
            return
        }
        if let (transaction, change) = STUN.changeRequest(bytes), change.changeIP || change.changePort {
            guard !change.changeIP, let answerFromPrimary else { return }
            answeredFromPrimary += 1
            answerFromPrimary(STUN.bindingSuccess(transaction, mapped: source), source)
            return
        }
        guard case .bindingRequest(let transaction) = try? STUN.decode(bytes) else { return }
        answered += 1
        output.send(STUN.bindingSuccess(transaction, mapped: source), to: source)
    }

    public func timeout(now: Instant, output: inout DatagramOutput) {}
    public func nextDeadline() -> Instant? { nil }
}
