/// The admin listener's status page (`GET /`): one small HTML document with inline CSS, no
/// script and no external resource, so that it loads from an operator's browser on a host
/// with no Internet access and cannot run anything.
///
/// Every figure is the same one `/metrics` exports, read from the same ``ServerSnapshot``;
/// each cell that shows a metric carries `data-metric="NAME"` (the sum over its labels), so
/// a test, or an operator's script, can compare the two. Everything interpolated is escaped.
public struct StatusPage: Sendable {
    /// The figures shown.
    public var snapshot: ServerSnapshot
    /// The last minute's rates (`nil` until two samples exist).
    public var rates: RateWindow.Rates?
    /// Where the store is (`nil`: nothing is kept).
    public var storeLocation: String?
    /// The server's UDP address, as bound.
    public var listening: String

    public init(snapshot: ServerSnapshot, rates: RateWindow.Rates?, storeLocation: String?, listening: String) {
        self.snapshot = snapshot
        self.rates = rates
        self.storeLocation = storeLocation
        self.listening = listening
    }

    /// The content type of ``render()``.
    public static let contentType = "text/html; charset=utf-8"

    /// The page, as UTF-8 HTML.
    public func render() -> String {
        let counters = snapshot.counters
        var html = """
        <!DOCTYPE html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>natchat-server \(Self.escape(listening))</title>
        <style>
        body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 52em; padding: 0 1em; color: #222; }
        h1 { font-size: 1.4em; margin-bottom: 0.2em; }
        h2 { font-size: 1.1em; margin: 1.4em 0 0.4em; border-bottom: 1px solid #ccc; }
        table { border-collapse: collapse; min-width: 24em; }
        th, td { text-align: left; padding: 0.15em 0.6em 0.15em 0; }
        td.n { text-align: right; font-variant-numeric: tabular-nums; }
        .bad { color: #a00; }
        .ok { color: #070; }
        footer { margin-top: 2em; color: #777; font-size: 0.85em; }
        </style>
        </head>
        <body>
        <h1>natchat-server</h1>
        <p>Version <span id="version">\(Self.escape(NatchatVersion.current))</span>,
        UDP \(Self.escape(listening)),
        up <span id="uptime">\(Self.escape(Self.duration(snapshot.uptimeSeconds)))</span>,
        <span class="\(snapshot.serving ? "ok" : "bad")" id="serving">\(snapshot.serving ? "serving" : "not serving")</span>.</p>

        """
        html += section("Clients", rows: [
            ("natchat/2", "natchat_server_clients{dialect=\"natchat2\"}", snapshot.extendedClients),
            ("classic", "natchat_server_clients{dialect=\"classic\"}", snapshot.classicClients),
            ("on other servers", "natchat_server_remote_clients", snapshot.remoteClients),
            ("registrations", "natchat_server_registrations_total", counters.registrations),
            ("evictions", "natchat_server_evictions_total", counters.evictions),
            ("mail waiting", "natchat_server_mail_waiting", snapshot.mailWaiting),
        ])
        html += "<h2>Last minute</h2>\n"
        if let rates {
            html += "<table>\n"
            html += rateRow("datagrams in", rates.datagramsIn, unit: "/s")
            html += rateRow("datagrams out", rates.datagramsOut, unit: "/s")
            html += rateRow("bytes in", rates.bytesIn, unit: "B/s")
            html += rateRow("bytes out", rates.bytesOut, unit: "B/s")
            html += rateRow("relayed bytes", rates.relayedBytes, unit: "B/s")
            html += rateRow("registrations", rates.registrations * 60, unit: "/min")
            html += rateRow("refusals", rates.refusals * 60, unit: "/min")
            html += rateRow("drops", rates.dropped * 60, unit: "/min")
            html += "</table>\n<p>Over the last \(Self.escape(Self.duration(Self.seconds(rates.span)))).</p>\n"
        } else {
            html += "<p>Not measured yet (the first samples are 5 s apart).</p>\n"
        }
        html += section("Relay", rows: [
            ("datagrams relayed", "natchat_server_relayed_datagrams_total", counters.relayedDatagrams),
            ("bytes relayed", "natchat_server_sent_bytes_total{kind=\"relay\"}", counters.sent.relay.bytes),
            ("punch rounds", "natchat_server_punch_rounds_total", counters.punchRounds),
        ])
        var refusalRows = [("all", "natchat_server_registration_refusals_total", counters.refused)]
        for reason in RendezvousService.RefusalReason.allCases where counters.refusals[reason] > 0 {
            refusalRows.append((reason.rawValue, "natchat_server_registration_refusals_total{reason=\"\(reason.rawValue)\"}",
                                counters.refusals[reason]))
        }
        for reason in ServerSnapshot.DropReason.allCases {
            refusalRows.append(("dropped: \(reason.rawValue)", "natchat_server_dropped_datagrams_total{reason=\"\(reason.rawValue)\"}",
                                snapshot.dropped(reason)))
        }
        html += section("Refusals and drops", rows: refusalRows)
        html += "<h2>Store</h2>\n"
        if let store = snapshot.store, let storeLocation {
            html += "<p>At <code>\(Self.escape(storeLocation))</code>"
            if let error = store.lastError {
                html += ", <span class=\"bad\">failing: \(Self.escape("\(error)"))</span>"
            }
            html += ".</p>\n"
            html += table(rows: [
                ("batches written", "natchat_server_store_batches_total", store.batchesWritten),
                ("changes written", "natchat_server_store_changes_total", store.changesWritten),
                ("changes pending", "natchat_server_store_pending_changes", store.pending),
                ("failed batches", "natchat_server_store_failures_total", store.failures),
                ("dropped changes", "natchat_server_store_dropped_changes_total", store.dropped),
            ])
            let latency = store.lastBatchLatency.map { "\(Self.milliseconds(Self.seconds($0))) ms" } ?? "none yet"
            html += "<p>Last batch: \(Self.escape(latency)).</p>\n"
        } else {
            html += "<p>None: nothing is kept across restarts (<code>--store memory</code>).</p>\n"
        }
        if let cluster = snapshot.cluster {
            html += "<h2>Cluster</h2>\n<p>The shared database "
            html += cluster.databaseReachable ? "<span class=\"ok\">answers</span>.</p>\n"
                : "<span class=\"bad\">does not answer</span>: new IDs are refused until it does.</p>\n"
            html += table(rows: [
                ("presence records waiting", "natchat_server_cluster_pending_presence", cluster.pendingPresence),
                ("claims waiting", "natchat_server_cluster_pending_claims", cluster.pendingClaims),
            ])
        }
        html += """
        <footer>Figures as of this page's request; the same ones are at <a href="/metrics">/metrics</a>.</footer>
        </body>
        </html>

        """
        return html
    }

    private func section(_ title: String, rows: [(String, String, Int)]) -> String {
        "<h2>\(Self.escape(title))</h2>\n" + table(rows: rows)
    }

    private func table(rows: [(String, String, Int)]) -> String {
        var html = "<table>\n"
        for (label, metric, value) in rows {
            html += "<tr><th>\(Self.escape(label))</th><td class=\"n\" data-metric=\"\(Self.escape(metric))\">\(value)</td></tr>\n"
        }
        return html + "</table>\n"
    }

    private func rateRow(_ label: String, _ value: Double, unit: String) -> String {
        "<tr><th>\(Self.escape(label))</th><td class=\"n\">\(Self.escape(Self.decimal(value))) \(Self.escape(unit))</td></tr>\n"
    }

    /// `text` with HTML's five special characters escaped, safe in text and in quoted attributes.
    public static func escape(_ text: String) -> String {
        var escaped = ""
        escaped.reserveCapacity(text.utf8.count)
        for character in text {
            switch character {
            case "&": escaped += "&amp;"
            case "<": escaped += "&lt;"
            case ">": escaped += "&gt;"
            case "\"": escaped += "&quot;"
            case "'": escaped += "&#39;"
            default: escaped.append(character)
            }
        }
        return escaped
    }

    static func decimal(_ value: Double) -> String {
        guard value.isFinite, abs(value) < 1e15 else { return "0" }
        let tenths = (value * 10).rounded()
        let sign = tenths < 0 ? "-" : ""
        let magnitude = Int(abs(tenths))
        return "\(sign)\(magnitude / 10).\(magnitude % 10)"
    }

    static func milliseconds(_ seconds: Double) -> String { decimal(seconds * 1000) }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    /// `3d 4h 5m 6s`, leading zero units left out.
    static func duration(_ seconds: Double) -> String {
        let total = seconds.isFinite ? max(0, Int(seconds)) : 0
        let parts = [(total / 86_400, "d"), (total / 3600 % 24, "h"), (total / 60 % 60, "m"), (total % 60, "s")]
        let shown = parts.drop { $0.0 == 0 && $0.1 != "s" }
        return shown.map { "\($0.0)\($0.1)" }.joined(separator: " ")
    }
}
