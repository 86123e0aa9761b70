import Synchronization

/// A store that keeps everything in memory and writes nothing (`--store memory`, and tests):
/// what it holds is lost with the process, as natchat behaved before it had a store.
public final class MemoryStore: DurableStore {
    private let state: Mutex<(claims: [String: ClaimRecord], mail: [Int64: MailRecord])>

    public init(_ snapshot: StoreSnapshot = StoreSnapshot()) {
        var claims: [String: ClaimRecord] = [:]
        for claim in snapshot.claims { claims[claim.id] = claim }
        var mail: [Int64: MailRecord] = [:]
        for message in snapshot.mail { mail[message.serial] = message }
        state = Mutex((claims, mail))
    }

    public var location: String { "memory" }

    public func load() throws(StoreError) -> StoreSnapshot {
        state.withLock { state in
            StoreSnapshot(claims: state.claims.values.sorted { $0.id < $1.id },
                          mail: state.mail.values.sorted { $0.serial < $1.serial })
        }
    }

    public func apply(_ changes: [StoreChange]) throws(StoreError) {
        state.withLock { state in
            for change in changes {
                switch change {
                case .putClaim(let claim): state.claims[claim.id] = claim
                case .removeClaim(let id): state.claims[id] = nil
                case .putMail(let message): state.mail[message.serial] = message
                case .removeMail(let serial): state.mail[serial] = nil
                }
            }
        }
    }
}
