/// The `known_peers` file's text: a `#` header, then one line per peer, fields separated by
/// one space:
///
/// ```
/// # natchat known peers: server id fingerprint first-seen last-seen (UTC); @trust <id> replaces a changed key
/// 127.0.0.1:10080 bob 8b:c7:2a:8d:9e:92:f1:f2 2026-05-01T10:00:00Z 2026-05-02T11:30:00Z
/// ```
///
/// Lines starting with `#` and blank lines are skipped. Any other line must hold exactly
/// the five fields, or ``parse(_:)`` throws a ``ParseError`` naming the line: a file someone
/// edited by hand is never half-read (and then overwritten without the line it could not read).
public enum KnownPeersFormat {
    /// The first line of every file written.
    public static let header = "# natchat known peers: server id fingerprint first-seen last-seen (UTC); @trust <id> replaces a changed key"

    /// Why a line cannot be read.
    public enum Problem: Hashable, Sendable, CustomStringConvertible {
        /// Not five fields separated by spaces.
        case fieldCount(Int)
        /// The ID is longer than 32 bytes or holds a control character.
        case invalidID
        /// The server is not `host:port`.
        case invalidServer
        /// The fingerprint is not hexadecimal digits and colons.
        case invalidFingerprint
        /// A date is not `YYYY-MM-DDTHH:MM:SSZ`.
        case invalidDate(String)
        /// *Last seen* is before *first seen*.
        case lastSeenBeforeFirstSeen
        /// The same server and ID on an earlier line.
        case duplicate(firstLine: Int)

        public var description: String {
            switch self {
            case .fieldCount(let count): "expected 5 fields (server id fingerprint first-seen last-seen), found \(count)"
            case .invalidID: "invalid peer ID"
            case .invalidServer: "invalid server (expected host:port)"
            case .invalidFingerprint: "invalid fingerprint (expected hexadecimal digits and colons)"
            case .invalidDate(let text): "invalid date \"\(text.prefix(40))\" (expected YYYY-MM-DDTHH:MM:SSZ)"
            case .lastSeenBeforeFirstSeen: "last seen is before first seen"
            case .duplicate(let first): "the same server and ID as line \(first)"
            }
        }
    }

    /// A line that cannot be read, and why.
    public struct ParseError: Error, Hashable, Sendable, CustomStringConvertible {
        /// From 1.
        public var line: Int
        public var problem: Problem

        public init(line: Int, problem: Problem) {
            self.line = line
            self.problem = problem
        }

        public var description: String { "line \(line): \(problem)" }
    }

    /// The file's text for `records`: the header, then one line each, in the order given.
    public static func encode(_ records: [KnownPeers.Record]) -> String {
        var text = header + "\n"
        for record in records {
            text += "\(record.server) \(record.id) \(record.fingerprint) \(iso8601(record.firstSeen)) \(iso8601(record.lastSeen))\n"
        }
        return text
    }

    /// The records in `text`, in file order; throws at the first line that is not a record.
    public static func parse(_ text: String) throws(ParseError) -> [KnownPeers.Record] {
        var records: [KnownPeers.Record] = []
        var lineOf: [KnownPeers.Key: Int] = [:]
        var number = 0
        // "\r\n" is one Character: a file edited on Windows splits as well.
        for line in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            number += 1
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if fields.isEmpty || fields[0].hasPrefix("#") { continue }
            guard fields.count == 5 else { throw ParseError(line: number, problem: .fieldCount(fields.count)) }
            let server = String(fields[0]), id = String(fields[1]), fingerprint = String(fields[2])
            guard isServer(server) else { throw ParseError(line: number, problem: .invalidServer) }
            guard isID(id) else { throw ParseError(line: number, problem: .invalidID) }
            guard isFingerprint(fingerprint) else { throw ParseError(line: number, problem: .invalidFingerprint) }
            guard let first = parseISO8601(fields[3]) else { throw ParseError(line: number, problem: .invalidDate(String(fields[3]))) }
            guard let last = parseISO8601(fields[4]) else { throw ParseError(line: number, problem: .invalidDate(String(fields[4]))) }
            guard last >= first else { throw ParseError(line: number, problem: .lastSeenBeforeFirstSeen) }
            let record = KnownPeers.Record(server: server, id: id, fingerprint: fingerprint, firstSeen: first, lastSeen: last)
            if let earlier = lineOf[record.key] { throw ParseError(line: number, problem: .duplicate(firstLine: earlier)) }
            lineOf[record.key] = number
            records.append(record)
        }
        return records
    }

    // MARK: - Fields

    static func isID(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.count <= 32 && !text.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }
    }

    static func isServer(_ text: String) -> Bool {
        guard let colon = text.lastIndex(of: ":"), colon != text.startIndex else { return false }
        guard let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else { return false }
        return text.utf8.count <= 255 && !text.unicodeScalars.contains { $0.value < 0x21 || $0.value == 0x7F }
    }

    static func isFingerprint(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.count <= 200 && text.utf8.contains { $0 != UInt8(ascii: ":") }
            && text.utf8.allSatisfy { $0 == UInt8(ascii: ":") || hexDigit($0) }
    }

    private static func hexDigit(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
            || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(byte)
    }

    // MARK: - ISO 8601 (UTC, whole seconds)

    /// `seconds` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (years 0000-9999 only make sense).
    public static func iso8601(_ seconds: Int64) -> String {
        let days = floorDivide(seconds, 86_400)
        let secondOfDay = seconds - days * 86_400
        let (year, month, day) = civil(fromDays: days)
        func two(_ value: Int64) -> String { value < 10 ? "0\(value)" : "\(value)" }
        var yearText = "\(year)"
        while yearText.count < 4 { yearText = "0" + yearText }
        return "\(yearText)-\(two(month))-\(two(day))T\(two(secondOfDay / 3600)):\(two(secondOfDay / 60 % 60)):\(two(secondOfDay % 60))Z"
    }

    /// `YYYY-MM-DDTHH:MM:SSZ` as seconds since the Unix epoch; `nil` for anything else
    /// (another form, an offset, a day the month does not have).
    public static func parseISO8601(_ text: some StringProtocol) -> Int64? {
        let bytes = Array(text.utf8)
        guard bytes.count == 20, bytes[4] == UInt8(ascii: "-"), bytes[7] == UInt8(ascii: "-"), bytes[10] == UInt8(ascii: "T"),
              bytes[13] == UInt8(ascii: ":"), bytes[16] == UInt8(ascii: ":"), bytes[19] == UInt8(ascii: "Z")
        else { return nil }
        func number(_ range: Range<Int>) -> Int64? {
            var value: Int64 = 0
            for byte in bytes[range] {
                guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
                value = value * 10 + Int64(byte - UInt8(ascii: "0"))
            }
            return value
        }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10),
              let hour = number(11..<13), let minute = number(14..<16), let second = number(17..<19),
              (1...12).contains(month), day >= 1, day <= daysIn(month: month, year: year),
              hour < 24, minute < 60, second < 60
        else { return nil }
        return days(fromCivil: year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
    }

    private static func floorDivide(_ a: Int64, _ b: Int64) -> Int64 {
        a >= 0 ? a / b : -((-a + b - 1) / b)
    }

    private static func daysIn(month: Int64, year: Int64) -> Int64 {
        switch month {
        case 2: (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    static func days(fromCivil year: Int64, _ month: Int64, _ day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = floorDivide(y, 400)
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    /// The proleptic Gregorian date of a day counted from 1970-01-01.
    static func civil(fromDays days: Int64) -> (year: Int64, month: Int64, day: Int64) {
        let z = days + 719_468
        let era = floorDivide(z, 146_097)
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}
