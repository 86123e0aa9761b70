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
            if portProbe.isActive, let due = portProbe.nextDeadline, now >= due {
                runProbe(portProbe.handleTimeout(now: now), now: now)
            }
            guard now >= startAt, now >= nextCheck else { return }
            for candidate in candidates { sendCheck(to: candidate.target, now: now) }
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
                sendCheck(to: Target(endpoint: endpoint, socket: pathSocket), now: now)
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

    func kind(of target: Target) -> CandidateKind {
        candidates.first(where: { $0.target == target })?.kind ?? learnedKind(of: target)
    }

    /// Counts an answered check to `target`; `true` once it has enough to be selected.
    /// Before that, a follow-up check goes to it at once.
    mutating func confirm(_ target: Target, now: Instant) -> Bool {
        let count = (confirmations[target] ?? 0) + 1
        guard count >= configuration.confirmationsToSelect else {
            if confirmations.count > 32 { confirmations.removeAll() }
            confirmations[target] = count
            sendCheck(to: target, now: now)
            return false
        }
        confirmations[target] = nil
        return true
    }

    /// Makes `target` the path, with fresh consent. A path on a probe socket keeps that
    /// socket (the others close); any other path closes them all.
    mutating func select(_ target: Target, kind: CandidateKind, now: Instant) {
        let previousSocket = pathSocket
        pathSocket = target.socket
        setPath(.direct(target.endpoint, kind))
        phase = .connected(Consent(now: now, nextCheck: now + configuration.keepAliveInterval))
        probeChecks = [:]
        if portProbe.isActive {
            runProbe(portProbe.answered(socket: target.socket, now: now), now: now)
        } else if let previousSocket, previousSocket != target.socket {
            outputs.append(.closeProbeSockets(keeping: target.socket))
        }
    }

    mutating func triggerCheck(to target: Target, now: Instant) {
        if lastTriggered.count > 32 { lastTriggered.removeAll() }
        lastTriggered[target] = now
        sendCheck(to: target, now: now)
    }

    mutating func sendCheck(to target: Target, now: Instant) {
        let transaction = nextTransaction
        nextTransaction &+= 1
        outstanding[transaction] = (target, now)
        if outstanding.count > 64 {
            // Bounded: forget the oldest checks (their pongs would be too late to matter).
            let oldest = outstanding.min { $0.value.sentAt < $1.value.sentAt }?.key
            if let oldest { outstanding[oldest] = nil }
        }
        transmit(.ping(transaction: transaction), to: target)
    }

    /// Queues `check` for `target`: from the chat socket or from a probe socket.
    mutating func transmit(_ check: Check, to target: Target) {
        if let socket = target.socket {
            outputs.append(.transmitFromProbeSocket(socket, check, to: target.endpoint))
        } else {
            outputs.append(.transmit(check, to: target.endpoint))
        }
    }

    mutating func failRound(round: UInt32, now: Instant) {
        outputs.append(.roundFailed(round: round))
        outstanding.removeAll()
        confirmations.removeAll()
        probeChecks.removeAll()
        if portProbe.isActive {
            // A port-probing attempt failed: its own back-off (longer: it costs far more
            // datagrams than a round), and its sockets close.
            let (wait, probeOutputs) = portProbe.fail(now: now)
            runProbe(probeOutputs, now: now)
            phase = .coolingDown(until: now + wait)
        } else if hopeless {
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
        candidates.removeAll { $0.kind == .peerReflexive || $0.kind == .probed }
        if pathSocket != nil {
            // The probe socket that carried the path goes with it.
            pathSocket = nil
            outputs.append(.closeProbeSockets(keeping: nil))
        }
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
