import Foundation
import Logging

/// A swift-log handler that writes one JSON object per line, for log collectors (journald's
/// JSON export, Loki, Elasticsearch, `jq`) rather than people:
///
///     {"ts":"2026-12-05T10:12:30.123Z","level":"warning","label":"natchat.server","msg":"…","source":"RendezvousServer","file":"Server.swift:42","peer":"…"}
///
/// `ts` is RFC 3339 in UTC with milliseconds, `level` swift-log's level name, `label` the
/// logger's label, `msg` the message; then the metadata (the handler's, the provider's and the
/// call's, the call's winning), flattened to strings: a nested dictionary's keys are joined
/// with dots (`peer.id`), an array is written as its elements' text joined by commas. A
/// metadata key that would collide with one of those fields is written as `meta.KEY`.
///
/// Why by hand: no package on this machine offers a maintained JSON line handler for
/// swift-log (swift-log ships only `StreamLogHandler`; swift-otel exports OTLP, not lines on
/// stderr), and the format is small enough to own and test.
///
/// Each line is built in full and handed to the stream in one call while a lock is held, so
/// lines from concurrent threads never interleave.
public struct JSONLineLogHandler: LogHandler {
    /// Where the lines go: stderr by default; tests collect them instead.
    public typealias Sink = @Sendable (String) -> Void

    /// The handler's own metadata (added to every line).
    public var metadata: Logger.Metadata = [:]
    /// The lowest level written.
    public var logLevel: Logger.Level = .info
    /// Metadata computed at each call (swift-log's task-local context, for instance).
    public var metadataProvider: Logger.MetadataProvider?
    /// Whether to write `source` (the module) and `file` (`File.swift:LINE`): useful for
    /// developers, noise for operators, so off unless asked for.
    public var includeSourceLocation: Bool

    private let label: String
    private let sink: Sink

    /// A handler writing to standard error, each line with one `write(2)`-sized call under a
    /// lock shared by every handler this process makes.
    public static func standardError(label: String, metadataProvider: Logger.MetadataProvider? = nil,
                                     includeSourceLocation: Bool = false) -> JSONLineLogHandler {
        JSONLineLogHandler(label: label, metadataProvider: metadataProvider, includeSourceLocation: includeSourceLocation) { line in
            StandardErrorLines.write(line)
        }
    }

    /// A handler giving each finished line (with its newline) to `sink`, which must be safe
    /// to call from any thread.
    public init(label: String, metadataProvider: Logger.MetadataProvider? = nil, includeSourceLocation: Bool = false,
                sink: @escaping Sink) {
        self.label = label
        self.metadataProvider = metadataProvider
        self.includeSourceLocation = includeSourceLocation
        self.sink = sink
    }

    /// The handler's metadata value for `key`.
    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// Writes one line (swift-log calls it only for messages at or above `logLevel`).
    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() {
            merged.merge(provided) { _, new in new }
        }
        if let explicit = event.metadata {
            merged.merge(explicit) { _, new in new }
        }
        let line = Self.encodeLine(date: Date(), level: event.level, label: label, message: "\(event.message)",
                                   metadata: merged,
                                   source: includeSourceLocation ? event.source : nil,
                                   file: includeSourceLocation ? "\(Self.fileName(event.file)):\(event.line)" : nil)
        sink(line)
    }

    /// The field names the handler writes itself; metadata keys equal to one become `meta.KEY`.
    public static let reservedFields: Set<String> = ["ts", "level", "label", "msg", "source", "file"]

    /// One JSON object and its newline. Public so that tests (and other writers of the same
    /// format) encode exactly as the handler does.
    public static func encodeLine(date: Date, level: Logger.Level, label: String, message: String,
                                  metadata: Logger.Metadata, source: String? = nil, file: String? = nil) -> String {
        var out = "{"
        appendField(&out, "ts", timestamp(date), first: true)
        appendField(&out, "level", level.rawValue)
        appendField(&out, "label", label)
        appendField(&out, "msg", message)
        if let source { appendField(&out, "source", source) }
        if let file { appendField(&out, "file", file) }
        var flat: [(String, String)] = []
        for (key, value) in metadata { flatten(key, value, into: &flat, depth: 0) }
        var seen = reservedFields
        for (key, value) in flat.sorted(by: { $0.0 < $1.0 }) {
            var name = reservedFields.contains(key) ? "meta." + key : key
            // A flattened key can meet a literal dotted one ("a" ["b": x] and "a.b"): keep both.
            var suffix = 2
            while seen.contains(name), suffix < 1_000 {
                name = (reservedFields.contains(key) ? "meta." + key : key) + "#\(suffix)"
                suffix += 1
            }
            seen.insert(name)
            appendField(&out, name, value)
        }
        out += "}\n"
        return out
    }

    /// RFC 3339 in UTC with milliseconds: `2026-12-05T10:12:30.123Z`.
    public static func timestamp(_ date: Date) -> String {
        // Whole microseconds first (rounded), so that binary fractions such as -0.001 s do not
        // lose a millisecond; then milliseconds and seconds rounded down (floored), as clocks do.
        let microseconds = Int64((date.timeIntervalSince1970 * 1_000_000).rounded())
        var milliseconds = microseconds / 1000
        if microseconds % 1000 < 0 { milliseconds -= 1 }
        var wholeSeconds = milliseconds / 1000
        var millisecond = milliseconds % 1000
        if millisecond < 0 { millisecond += 1000; wholeSeconds -= 1 }
        var time = time_t(wholeSeconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(millisecond), 3))Z"
    }

    /// `text` as a JSON string literal, quotes included: `"` and `\` escaped, the control
    /// characters U+0000–U+001F as `\n`, `\r`, `\t`, `\b`, `\f` or `\u00XX`, and U+2028/U+2029
    /// as `\u2028`/`\u2029` (valid JSON either way, but some JavaScript readers choke on them);
    /// every other character as itself, in UTF-8.
    public static func quoted(_ text: String) -> String {
        var out = "\""
        out.reserveCapacity(text.utf8.count + 2)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            case "\u{2028}": out += "\\u2028"
            case "\u{2029}": out += "\\u2029"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
        return out
    }

    private static func appendField(_ out: inout String, _ name: String, _ value: String, first: Bool = false) {
        if !first { out += "," }
        out += quoted(name)
        out += ":"
        out += quoted(value)
    }

    /// Nested dictionaries become dotted keys; arrays their elements' text joined by commas.
    /// Depth is bounded (metadata is the program's own, but a bound costs nothing).
    private static func flatten(_ key: String, _ value: Logger.Metadata.Value, into flat: inout [(String, String)], depth: Int) {
        switch value {
        case .string(let text): flat.append((key, text))
        case .stringConvertible(let convertible): flat.append((key, convertible.description))
        case .array(let values): flat.append((key, values.map(text).joined(separator: ",")))
        case .dictionary(let dictionary):
            guard depth < 8 else { flat.append((key, text(value))); return }
            for (inner, innerValue) in dictionary { flatten(key + "." + inner, innerValue, into: &flat, depth: depth + 1) }
        }
    }

    private static func text(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let text): return text
        case .stringConvertible(let convertible): return convertible.description
        case .array(let values): return "[" + values.map(text).joined(separator: ",") + "]"
        case .dictionary(let dictionary):
            return "{" + dictionary.sorted { $0.key < $1.key }.map { "\($0.key)=\(text($0.value))" }.joined(separator: ",") + "}"
        }
    }

    private static func fileName(_ path: String) -> Substring {
        path.split(separator: "/").last ?? Substring(path)
    }
}

/// Whole lines to stderr from any thread: one lock for the process, one write per line.
enum StandardErrorLines {
    private static let lock = NSLock()

    static func write(_ line: String) {
        let data = Data(line.utf8)
        lock.lock()
        defer { lock.unlock() }
        FileHandle.standardError.write(data)
    }
}
