import Addressing
import MonotonicTime
import Wire

// PathAgent's port probing: the ``PortProbe`` schedule's checks, their answers, and what a
// probed path needs (its socket, its candidates' kind).

extension PathAgent {
    /// Carries out what the port-probing schedule answered: its checks become pings with
    /// fresh transactions (remembered in ``probeChecks``), the rest goes to the owner.
    mutating func runProbe(_ probeOutputs: [PortProbe.Output], now: Instant) {
        for output in probeOutputs {
            switch output {
            case .openSockets(let count):
                outputs.append(.openProbeSockets(count: count))
            case .closeSockets(let keeping):
                outputs.append(.closeProbeSockets(keeping: keeping))
            case .report(let report):
                outputs.append(.probeReport(report))
            case .check(let socket, let endpoint):
                sendProbe(to: Target(endpoint: endpoint, socket: socket), now: now)
            }
        }
    }

    /// A probe: a ping like any check, its transaction kept apart (a probe rate would flush
    /// the 64 outstanding checks) and for ``probeAnswerWindow`` only.
    mutating func sendProbe(to target: Target, now: Instant) {
        if probeChecks.count >= 512 {
            probeChecks = probeChecks.filter { now - $0.value.sentAt <= Self.probeAnswerWindow }
            if probeChecks.count >= 512 { probeChecks.removeAll() }
        }
        let transaction = nextTransaction
        nextTransaction &+= 1
        probeChecks[transaction] = (target, now)
        transmit(.ping(transaction: transaction), to: target)
    }

    /// A pong to one of the attempt's probes, from `target` (the endpoint and the socket it
    /// came by). It counts only from the exact endpoint the probe went to and on the socket
    /// it left from, within ``probeAnswerWindow``: then the endpoint is a `probed` candidate
    /// and gets the usual follow-up check (a second answer selects it).
    mutating func answerProbe(transaction: UInt64, from target: Target, now: Instant) {
        guard let sent = probeChecks.removeValue(forKey: transaction), sent.target == target,
              now - sent.sentAt <= Self.probeAnswerWindow, portProbe.isActive
        else { return }
        if !candidates.contains(where: { $0.target == target }) {
            candidates.append(Candidate(endpoint: target.endpoint, kind: .probed, socket: target.socket))
        }
        guard confirm(target, now: now) else { return }
        failedRounds = 0
        select(target, kind: .probed, now: now)
        roundTrip = RoundTripEstimate(firstSample: now - sent.sentAt)
    }

    /// The kind of a candidate learned from a ping: `probed` when it came on a probe socket,
    /// or (easy side, during an attempt) from a port of the hard side's address; else
    /// peer-reflexive.
    func learnedKind(of target: Target) -> CandidateKind {
        if target.socket != nil { return .probed }
        if probeRole == .easy, portProbe.isActive { return .probed }
        return .peerReflexive
    }

    /// Whether the path was found by port probing.
    var hasProbedPath: Bool {
        if pathSocket != nil { return true }
        if case .direct(_, .probed) = path { return true }
        return false
    }

    /// Drops a probed path (a new punch instruction starts over): its socket closes.
    mutating func dropProbedPath() {
        if pathSocket != nil {
            pathSocket = nil
            outputs.append(.closeProbeSockets(keeping: nil))
        }
        if case .direct(_, .probed) = path {
            setPath(.relayed)
        }
        if case .connected = phase { phase = .idle }
        candidates.removeAll { $0.kind == .probed }
    }
}
