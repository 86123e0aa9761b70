import Addressing
import Identity
import MonotonicTime
import Wire

// `natchat --release-id` and `--rotate-identity`: the owner of a claimed ID gives it up, or
// hands it to a new key. The request is a session message (the session proves the current
// key), sent once registered and again every second until the server answers
// `claimChanged`, at most ten times.

/// A change to our own ID's claim, asked of the server.
public enum ClaimChangeRequest: Hashable, Sendable {
    /// Give the claim up: any key may register the ID afterwards.
    case release
    /// Hand the claim to `newKeys`; `signature` is the new signing key's over
    /// ``ExtendedMessage/rotationStatement(id:newKeys:)``.
    case rotate(newKeys: PublicKeys, signature: [UInt8])
}

/// A claim change in progress.
struct PendingClaimChange: Hashable, Sendable {
    var request: ClaimChangeRequest
    var nextSend: Instant
    var attempts: Int
}

extension ChatClientStateMachine {
    /// Most sendings of a claim change before it is given up.
    static let claimChangeAttempts = 10

    /// Asks the server to change our ID's claim, as soon as the session is registered.
    public mutating func requestClaimChange(_ request: ClaimChangeRequest, now: Instant) -> [Output] {
        claimChange = PendingClaimChange(request: request, nextSend: now, attempts: 0)
        sendClaimChangeIfDue(now: now)
        return takeOutputs()
    }

    /// Signs a rotation of our claim to `newIdentity` (its statement, with the new key).
    public func rotation(to newIdentity: IdentityKey) throws -> ClaimChangeRequest {
        let statement = ExtendedMessage.rotationStatement(id: configuration.id, newKeys: newIdentity.publicKeys)
        return .rotate(newKeys: newIdentity.publicKeys, signature: Array(try newIdentity.signing.signature(for: statement)))
    }

    mutating func sendClaimChangeIfDue(now: Instant) {
        guard var pending = claimChange, now >= pending.nextSend, session.isRegistered, session.dialect == .natchat2 else { return }
        guard pending.attempts < Self.claimChangeAttempts else {
            claimChange = nil
            emit(.claimChangeUnanswered)
            return
        }
        let message: ExtendedMessage = switch pending.request {
        case .release: .releaseClaim(id: configuration.id)
        case .rotate(let newKeys, let signature): .rotateKey(id: configuration.id, newKeys: newKeys, signature: signature)
        }
        runSession(session.send(message), now: now)
        pending.attempts += 1
        pending.nextSend = now + .seconds(1)
        claimChange = pending
    }

    /// When the next sending of a claim change is due.
    var claimChangeDue: Instant? {
        guard let pending = claimChange else { return nil }
        // Before registration it waits for the session (registration wakes the machine anyway).
        return session.isRegistered ? pending.nextSend : nil
    }

    /// The server's answer: our claim now belongs to `keys` (or nobody).
    mutating func claimChanged(_ id: ClientID, keys: PublicKeys?) {
        guard id == configuration.id, let pending = claimChange else { return }
        claimChange = nil
        switch (pending.request, keys) {
        case (.release, nil):
            emit(.claimReleased)
        case (.rotate(let newKeys, _), let keys?) where keys == newKeys:
            emit(.claimRotated(fingerprint: IdentityKey.fingerprint(of: newKeys)))
        default:
            emit(.claimChangeRefused)
        }
    }
}
