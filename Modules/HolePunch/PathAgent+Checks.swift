import Addressing
import MonotonicTime
import Wire

// PathAgent's internals: rounds, checks, consent and the path itself.

extension PathAgent {

    mutating func requestRound(now: Instant) {
        outputs.append(.requestRound)
        phase = .awaitingPunch(since: now)
    }

    mutating func startImplicitRound(now: Instant) {
        phase = .punching(round: 0, startAt: now, deadline: now + configuration.roundDuration,
                          nextCheck: now + configuration.firstCheckInterval, interval: configuration.firstCheckInterval)
    }

    mutating func runTimers(now: Instant) {
        switch phase {
        case .idle, .relayOnly:
            return
        case .awaitingPunch(let since):
            // The connect request or the punch answer was lost: ask again, while someone
            // still wants to talk to the peer.
            guard now >= since + .seconds(3) else { return }
            if let interest = lastInterest, now - interest <= configuration.interestWindow {
                requestRound(now: now)
            } else {
                phase = .idle
            }
        case .punching(let round, let startAt, let deadline, let nextCheck, let interval):
            if now >= deadline {
                failRound(round: round, now: now)
                return
            }
            guard now >= startAt, now >= nextCheck else { return }
            for candidate in candidates { sendCheck(to: candidate.endpoint, now: now) }
            let next = min(interval * 3 / 2, configuration.maxCheckInterval)
            phase = .punching(round: round, startAt: startAt, deadline: deadline, nextCheck: now + interval, interval: next)
        case .connected(var consent):
            while let sentAt = consent.pending.first, now >= sentAt + configuration.keepAliveAnswerTimeout {
                consent.pending.removeFirst()
                consent.misses += 1
                if !consent.suspect {
                    // Missed one: check often until one is answered.
                    consent.suspect = true
                    consent.nextCheck = consent.lastCheck.map { max(now, $0 + configuration.suspectCheckInterval) } ?? now
                }
            }
            if consent.misses >= configuration.missesToLosePath, now >= consent.lastConsent + configuration.consentTimeout {
                losePath(now: now)
                return
            }
            if now >= consent.nextCheck, let endpoint = directEndpoint {
                sendCheck(to: endpoint, now: now)
                consent.pending.append(now)
                consent.lastCheck = now
                consent.nextCheck = now + (consent.suspect ? configuration.suspectCheckInterval : configuration.keepAliveInterval)
            }
            phase = .connected(consent)
        case .coolingDown(let until):
            guard now >= until else { return }
            if let interest = lastInterest, now - interest <= configuration.interestWindow {
                requestRound(now: now)
            } else {
                phase = .idle
            }
        }
    }

    func kind(of endpoint: Endpoint) -> CandidateKind {
        candidates.first(where: { $0.endpoint == endpoint })?.kind ?? .peerReflexive
    }

    /// Counts an answered check to `endpoint`; `true` once it has enough to be selected.
    /// Before that, a follow-up check goes to it at once.
    mutating func confirm(_ endpoint: Endpoint, now: Instant) -> Bool {
        let count = (confirmations[endpoint] ?? 0) + 1
        guard count >= configuration.confirmationsToSelect else {
            if confirmations.count > 32 { confirmations.removeAll() }
            confirmations[endpoint] = count
            sendCheck(to: endpoint, now: now)
            return false
        }
        confirmations[endpoint] = nil
        return true
    }

    /// Makes `endpoint` the path, with fresh consent.
    mutating func select(_ endpoint: Endpoint, kind: CandidateKind, now: Instant) {
        setPath(.direct(endpoint, kind))
        phase = .connected(Consent(now: now, nextCheck: now + configuration.keepAliveInterval))
    }

    mutating func triggerCheck(to endpoint: Endpoint, now: Instant) {
        if lastTriggered.count > 32 { lastTriggered.removeAll() }
        lastTriggered[endpoint] = now
        sendCheck(to: endpoint, now: now)
    }

    mutating func sendCheck(to endpoint: Endpoint, now: Instant) {
        let transaction = nextTransaction
        nextTransaction &+= 1
        outstanding[transaction] = (endpoint, now)
        if outstanding.count > 64 {
            // Bounded: forget the oldest checks (their pongs would be too late to matter).
            let oldest = outstanding.min { $0.value.sentAt < $1.value.sentAt }?.key
            if let oldest { outstanding[oldest] = nil }
        }
        outputs.append(.transmit(.ping(transaction: transaction), to: endpoint))
    }

    mutating func failRound(round: UInt32, now: Instant) {
        outputs.append(.roundFailed(round: round))
        outstanding.removeAll()
        confirmations.removeAll()
        if hopeless {
            phase = .relayOnly
        } else {
            let cooldowns = configuration.retryCooldowns
            let wait = cooldowns.isEmpty ? .seconds(30) : cooldowns[min(failedRounds, cooldowns.count - 1)]
            failedRounds += 1
            phase = .coolingDown(until: now + wait)
        }
        if path != .relayed { setPath(.relayed) }
    }

    mutating func losePath(now: Instant) {
        outstanding.removeAll()
        confirmations.removeAll()
        candidates.removeAll { $0.kind == .peerReflexive }
        setPath(.relayed)
        failedRounds = 0
        requestRound(now: now)
    }

    mutating func setPath(_ newPath: Path) {
        guard newPath != path else { return }
        path = newPath
        if newPath.directEndpoint == nil { roundTrip = nil }
        outputs.append(.pathChanged(newPath))
    }
}
