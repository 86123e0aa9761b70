import Addressing
import Identity
import ChatRouter
import KnownPeers
import MonotonicTime
import Wire

/// The shell's words: turns each ``ClientEvent`` into the lines the user reads. The one
/// place an event's words are written (the runner adds only `* bye`, the identity notice at
/// start and the refusal's advice), so a front end with other words (or another language)
/// replaces this and little else.
public enum ShellFormatter {
    /// The lines for `event` (none for an event the shell does not print).
    public static func lines(for event: ClientEvent) -> [String] {
        if case .whois(let report) = event { return lines(for: report) }
        if case .status(let report) = event { return lines(for: report) }
        return line(for: event).map { [$0] } ?? []
    }

    /// `@whois`: the pinned key and its dates, and the path; a second line when the peer is held.
    static func lines(for report: WhoisReport) -> [String] {
        let id = report.id
        let path: String = switch report.path {
        case .path(let path): "path \(path)"
        case .classicPeer: "classic client (no key), path classic"
        case .notHeld: "not online (as far as this client knows)"
        case .classicSession: "classic session (no keys or paths)"
        case .yourself: "yourself"
        }
        guard !report.knownPeersOff else { return ["* \(id): known peers are off (--known-peers none); \(path)"] }
        guard let record = report.record else { return ["* \(id): no key pinned; \(path)"] }
        var lines = ["* \(id): key \(record.fingerprint), first seen \(KnownPeersFormat.iso8601(record.firstSeen)), "
            + "last seen \(KnownPeersFormat.iso8601(record.lastSeen)); \(path)"]
        if let seen = record.heldFingerprint {
            lines.append("* \(id) is HELD: it showed key \(seen) instead; check it with \(id) out of band, then @trust \(id)")
        }
        return lines
    }

    static func line(for event: ClientEvent) -> String? {
        switch event {
        case .registered(let id, let endpoint, .natchat2(let fingerprint)):
            "* registered as \(id) (public \(endpoint)); natchat/2, key \(fingerprint)"
        case .registered(let id, let endpoint, .classic(let others)):
            "* registered as \(id) (public \(endpoint)); "
                + (others.isEmpty ? "no other clients online" : "online: \(others.map(\.rawValue).joined(separator: " "))")
        case .registeredAgain(let id, let endpoint):
            "* registered again as \(id) (public \(endpoint))"
        case .serverChanged(let from, let to, _):
            "* server \(from) is not answering; now registered with \(to)"
        case .registeringAgain(.unknownSession):
            "* the server lost our session; registering again"
        case .registeringAgain(.serverSilent):
            "* the server stopped answering; registering again"
        case .publicEndpointChanged(let endpoint):
            "* the server now sees you at \(endpoint)"
        case .serverNotice(let text):
            "From server [\(text)]"
        case .registrationRefused:
            nil
        case .claimReleased:
            "* the claim on your ID was released: any key may register it now"
        case .claimRotated(let fingerprint):
            "* your ID is now claimed by the new key \(fingerprint)"
        case .claimChangeRefused:
            "* the server did not change the claim: this key does not hold it"
        case .claimChangeUnanswered:
            "* the server did not answer the claim change"
        case .natClassified(let kind):
            "* NAT: \(kind)"
        case .joined(let id, let endpoint, let classicPeer):
            "* \(id) joined (\(endpoint))\(classicPeer ? " [classic]" : "")"
        case .sameNAT(let id, let address):
            "* \(id) is behind the same NAT (private \(address))"
        case .moved(let id, let endpoint):
            "* \(id) moved to \(endpoint)"
        case .left(let id, let reason, let endpoint):
            "* \(id) is \(reason == .offline ? "off-line" : "unregistered") \(endpoint)"
        case .moreOnline(let count):
            "* and \(count) more online; @show_list lists them"
        case .rosterScopeChanged(.interest, let registered):
            "* \(registered) clients are registered: the list is no longer followed; @show_list and Tab ask the server"
        case .rosterScopeChanged(.complete, let registered):
            "* \(registered) clients are registered: following the whole list again"
        case .chat(let from, let text, let origin):
            "From \(from) [\(text)]\(origin == .unverifiedClassicPeer ? " (unverified: classic client)" : "")"
        case .delivered(let to):
            "* delivered to \(to)"
        case .undelivered(let to, let text, .serverSilent):
            "* NOT delivered to \(to): \"\(text)\" (the server did not answer whether \(to) is registered)"
        case .undelivered(let to, let text, .mailboxRefused(let refusal)):
            "* NOT delivered to \(to): \"\(text)\" (the server would not queue it: \(refusal))"
        case .undelivered(let to, let text, .mailboxSilent):
            "* NOT delivered to \(to): \"\(text)\" (the server did not answer the request to queue it)"
        case .undelivered(let to, let text, .unsealable):
            "* NOT delivered to \(to): \"\(text)\" (it could not be sealed to \(to)'s key)"
        case .undelivered(let to, let text, _):
            "* NOT delivered to \(to): \"\(text)\""
        case .noSuchPeer(let id):
            "There is no \(id) in registration list."
        case .lookupPending(let id):
            "* the server has not answered yet whether \(id) is registered; still asking"
        case .tooManyInFlight(let id):
            "* cannot send to \(id): too many messages waiting for acknowledgement"
        case .pathChanged(let id, let path):
            "* path to \(id): \(path)"
        case .keyChanged(let id):
            "!!! WARNING: the server announced a different key for \(id); keeping the key pinned at first sight. "
                + "Someone may be impersonating \(id)."
        case .peerKeyChanged(let id, let pinned, let seen):
            "* WARNING: \(id)'s key changed: pinned \(pinned), now \(seen). Chat with \(id) is held; "
                + "check the new fingerprint with \(id) out of band, then @trust \(id)"
        case .queued(let to, let keptSeconds, let reason):
            "* \(to) \(queuedBecause(reason)): queued at the server (kept \(keptFor(keptSeconds)))"
        case .mail(let from, let text, let sentAt):
            "From \(from) [\(text)] (sent \(minuteUTC(sentAt)), queued)"
        case .mailRejected(let from, .unreadable(let problem)):
            "* a queued message from \(from) was not shown: it could not be opened (\(unreadable(problem)))"
        case .mailRejected(let from, .otherKey(let seen, let known)):
            "* WARNING: a queued message said to be from \(from) was not shown: it is signed by key \(seen), "
                + "not by \(from)'s key \(known). Someone may be impersonating \(from)."
        case .mailDelivered(let to, let queuedEarlier):
            "* delivered to \(to)\(queuedEarlier ? " (queued earlier)" : "")"
        case .chatHeld(let id, let text):
            "* NOT sent to \(id): \"\(text)\" (chat with \(id) is held: its key changed; @whois \(id), then @trust \(id))"
        case .chatFromHeldPeer(let id):
            "* a message from \(id) was not shown: chat with \(id) is held (its key changed; @whois \(id), then @trust \(id))"
        case .trusted(let id, let previous, let now):
            "* \(id)'s key \(now) is trusted (was \(previous)); chat with \(id) goes on"
        case .trustNotNeeded(let id, let fingerprint):
            "* \(id) is not held: its key \(fingerprint) is the one pinned"
        case .nothingPinned(let id):
            "* no key is pinned for \(id): nothing to trust"
        case .knownPeersOff:
            "* known peers are off (--known-peers none): nothing to trust"
        case .whois(let report):
            lines(for: report).joined(separator: "\n")
        case .listEntry(let entry):
            line(for: entry)
        case .listFooter(let footer):
            line(for: footer)
        case .listEmpty:
            "(no registered clients yet)"
        case .listUnanswered:
            "* the server did not answer @show_list; try again"
        case .help:
            Command.helpText
        case .status(let report):
            lines(for: report).joined(separator: "\n")
        case .pingAnswered(let id, let route, let roundTrip):
            "pong from \(id) via \(route == .relayed ? "relay" : "\(route)") in \(milliseconds(roundTrip))"
        case .pingUnanswered(let id, let route, let after):
            "no answer from \(id) within \(seconds(after)) (path: \(route))"
        case .pingNotSent(let id, let problem):
            "* not pinged \(id): " + pingProblem(problem, id: id)
        }
    }

    static func pingProblem(_ problem: PingProblem, id: ClientID) -> String {
        switch problem {
        case .unknownPeer: "not online (as far as this client knows)"
        case .classicPeer: "a classic client has no key to answer with"
        case .noKey: "no key for \(id), or chat with it is held (@whois \(id))"
        case .tooManyInFlight: "too many pings waiting for answers"
        case .yourself: "that is you"
        case .notRegistered: "not registered with a natchat/2 server yet"
        }
    }

    /// `@status` (and `natchat --status`), in the manner of `tailscale status`: the client's
    /// own lines, then one aligned line per peer — ID, path, round trip, last heard and, for
    /// a relayed peer, why.
    public static func lines(for report: StatusReport) -> [String] {
        var lines = [
            "\(report.id)  key \(report.keyFingerprint)  \(report.session)",
            "  server \(report.server)  rtt \(report.serverRoundTrip.map(milliseconds) ?? "-")",
            "  public \(report.publicEndpoint.map { "\($0)" } ?? "-")  NAT \(report.natKind)",
        ]
        guard !report.peers.isEmpty else {
            lines.append(report.otherPeers > 0 ? "(no peer talked to; \(report.otherPeers) more registered)" : "(no peers)")
            return lines
        }
        let rows = report.peers.map { peer in
            [peer.id.rawValue, "\(peer.route)", "rtt " + (peer.roundTrip.map(milliseconds) ?? "-"),
             "heard " + (peer.lastHeard.map { seconds($0) + " ago" } ?? "never"),
             peer.relayReason.map { "(\($0))" } ?? ""]
        }
        var widths = [Int](repeating: 0, count: 4)
        for row in rows { for column in 0..<4 { widths[column] = max(widths[column], row[column].count) } }
        for row in rows {
            var line = ""
            for column in 0..<4 { line += row[column] + String(repeating: " ", count: widths[column] - row[column].count + 2) }
            line += row[4]
            while line.last == " " { line.removeLast() }
            lines.append(line)
        }
        if report.otherPeers > 0 { lines.append("(and \(report.otherPeers) more registered, not talked to)") }
        return lines
    }

    /// `12.3 ms`: a round trip to a tenth of a millisecond.
    static func milliseconds(_ duration: Duration) -> String {
        let tenths = max(Int64(0), (duration.nanosecondsClamped + 50_000) / 100_000)
        return "\(tenths / 10).\(tenths % 10) ms"
    }

    /// `3 s`, `2.5 s`: a wait to a tenth of a second (whole seconds without the decimal).
    static func seconds(_ duration: Duration) -> String {
        let tenths = max(Int64(0), (duration.nanosecondsClamped + 50_000_000) / 100_000_000)
        return tenths % 10 == 0 ? "\(tenths / 10) s" : "\(tenths / 10).\(tenths % 10) s"
    }

    static func queuedBecause(_ reason: ExtendedRouter.MailReason) -> String {
        switch reason {
        case .offline: "is offline"
        case .notAcknowledged: "did not answer"
        case .peerLeft: "left"
        }
    }

    static func line(for entry: ListLine) -> String {
        switch entry {
        case .classic(let id, let endpoint):
            ClassicMessage.peer(id, endpoint).text
        case .own(let id, let endpoint, let natKind):
            "\(id) \(endpoint.map { "\($0)" } ?? "?") (you; NAT: \(natKind))"
        case .peer(let id, let endpoint, let path, let claimedSince):
            "\(id) \(endpoint) \(path.map { "\($0)" } ?? "classic")"
                + (claimedSince == 0 ? "" : " (claimed since \(KnownPeersFormat.iso8601(Int64(claimedSince)).prefix(10)))")
        }
    }

    /// Where the page is and how to get the next one.
    static func line(for footer: ListFooter) -> String {
        let (total, shown, first, page, size) = (footer.total, footer.shown, footer.first, footer.page, footer.pageSize)
        let matching = footer.prefix.map { " starting with \($0)" } ?? ""
        if total == 0, let prefix = footer.prefix { return "-- no ID starts with \(prefix) --" }
        if shown == 0 {
            let what = footer.prefix == nil ? counted(total, "client") : "\(total)\(matching)"
            return "-- no page \(page): \(what), \(counted(footer.pages, "page")) of \(size) --"
        }
        let range = shown == 1 ? "\(first + 1)" : "\(first + 1)-\(first + shown)"
        let position = "\(range) of \(total)\(matching)"
        let isLast = first + shown >= total
        switch (footer.prefix, isLast) {
        case (nil, false):
            return "-- \(position); @show_list \(page + 1) for the next page, @show_list <prefix> to filter --"
        case (nil, true):
            return "-- \(position), the last page; @show_list <prefix> to filter --"
        case (let prefix?, false):
            return "-- \(position); @show_list \(prefix) \(page + 1) for the next page --"
        case (_?, true):
            return footer.pages == 1 ? "-- \(position) --" : "-- \(position), the last page --"
        }
    }

    /// How long the mailbox keeps a message: whole days, else hours, minutes or seconds.
    static func keptFor(_ seconds: UInt32) -> String {
        switch seconds {
        case 86_400...: counted(Int(seconds / 86_400), "day")
        case 3_600...: counted(Int(seconds / 3_600), "hour")
        case 60...: counted(Int(seconds / 60), "minute")
        default: counted(Int(seconds), "second")
        }
    }

    /// A Unix time as `yyyy-MM-dd HH:mm`, in UTC (the sender's clock says it: past the year
    /// 9999 it is shown as 9999-12-31 23:59).
    static func minuteUTC(_ unixSeconds: UInt64) -> String {
        let iso = KnownPeersFormat.iso8601(Int64(min(unixSeconds, 253_402_300_799)))   // 2026-12-04T14:03:00Z
        return String(iso.prefix(16).map { $0 == "T" ? " " : $0 })
    }

    private static func unreadable(_ problem: MailSeal.OpenError) -> String {
        switch problem {
        case .malformed: "malformed"
        case .badSignature: "bad signature"
        case .cannotDecrypt: "not sealed to your key"
        }
    }

    private static func counted(_ n: Int, _ noun: String) -> String {
        "\(n) \(noun)\(n == 1 ? "" : "s")"
    }
}
