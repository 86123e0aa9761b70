#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KnownPeers
import Testing

// The table (pin, known, changed → held, trust), the file format (round trip, every bad
// line) and the file (owner-only, atomic, never overwritten with less than it holds).

private let server = "127.0.0.1:10080"
private let pinned = "0f:4a:44:bc:e7:a7:40:08", other = "8b:c7:2a:8d:9e:92:f1:f2", third = "01:02:03:04:05:06:07:08"
/// 2026-05-01T10:00:00Z
private let day: Int64 = 1_777_629_600

@Suite struct KnownPeersTableTests {
    @Test func firstSightPinsTheKey() {
        var table = KnownPeers()
        #expect(table.observe(server: server, id: "bob", fingerprint: pinned, now: day) == .new)
        let record = table.whois(server: server, id: "bob")
        #expect(record == KnownPeers.Record(server: server, id: "bob", fingerprint: pinned, firstSeen: day, lastSeen: day))
        #expect(table.revision == 1)
        #expect(table.whois(server: "other:10080", id: "bob") == nil)
    }

    @Test func theSameKeyIsKnownAndLastSeenMovesByTheMinute() {
        var table = KnownPeers()
        _ = table.observe(server: server, id: "bob", fingerprint: pinned, now: day)
        #expect(table.observe(server: server, id: "bob", fingerprint: pinned, now: day + 30) == .known)
        #expect(table.whois(server: server, id: "bob")?.lastSeen == day)
        #expect(table.revision == 1)
        #expect(table.observe(server: server, id: "bob", fingerprint: pinned, now: day + 90) == .known)
        #expect(table.whois(server: server, id: "bob")?.lastSeen == day + 90)
        #expect(table.whois(server: server, id: "bob")?.firstSeen == day)
        #expect(table.revision == 2)
    }

    @Test func anotherKeyIsNotTakenAndHoldsThePeer() {
        var table = KnownPeers()
        _ = table.observe(server: server, id: "bob", fingerprint: pinned, now: day)
        #expect(table.observe(server: server, id: "bob", fingerprint: other, now: day + 100) == .changed(pinned: pinned, seen: other))
        #expect(table.isHeld(server: server, id: "bob"))
        #expect(table.whois(server: server, id: "bob")?.fingerprint == pinned)
        #expect(table.whois(server: server, id: "bob")?.heldFingerprint == other)
        #expect(table.held(on: server) == ["bob"])
        // Seen again: nothing new to say; yet another key is news.
        #expect(table.observe(server: server, id: "bob", fingerprint: other, now: day + 200) == .stillHeld(pinned: pinned, seen: other))
        #expect(table.observe(server: server, id: "bob", fingerprint: third, now: day + 300) == .changed(pinned: pinned, seen: third))
        // The pin is unchanged on disk: holds are not revisions.
        #expect(table.revision == 1)
    }

    @Test func trustReplacesThePinAndReleasesTheHold() {
        var table = KnownPeers()
        _ = table.observe(server: server, id: "bob", fingerprint: pinned, now: day)
        _ = table.observe(server: server, id: "bob", fingerprint: other, now: day + 100)
        #expect(table.trust(server: server, id: "bob", now: day + 200) == .trusted(previous: pinned, now: other))
        #expect(!table.isHeld(server: server, id: "bob"))
        #expect(table.whois(server: server, id: "bob") == KnownPeers.Record(server: server, id: "bob", fingerprint: other,
                                                                           firstSeen: day + 200, lastSeen: day + 200))
        #expect(table.observe(server: server, id: "bob", fingerprint: other, now: day + 300) == .known)
        #expect(table.trust(server: server, id: "bob", now: day + 300) == .notHeld(fingerprint: other))
        #expect(table.trust(server: server, id: "carol", now: day + 300) == .unknown)
    }

    @Test func thePinnedKeyBackEndsTheHold() {
        var table = KnownPeers()
        _ = table.observe(server: server, id: "bob", fingerprint: pinned, now: day)
        _ = table.observe(server: server, id: "bob", fingerprint: other, now: day + 100)
        #expect(table.observe(server: server, id: "bob", fingerprint: pinned, now: day + 200) == .known)
        #expect(!table.isHeld(server: server, id: "bob"))
    }

    @Test func serversAreApart() {
        var table = KnownPeers()
        _ = table.observe(server: server, id: "bob", fingerprint: pinned, now: day)
        #expect(table.observe(server: "chat.example.org:10080", id: "bob", fingerprint: other, now: day) == .new)
        #expect(table.count == 2)
        #expect(table.allRecords.map(\.server) == ["127.0.0.1:10080", "chat.example.org:10080"])
    }

    @Test func adoptKeepsOwnRecords() {
        var table = KnownPeers(records: [.init(server: server, id: "bob", fingerprint: pinned, firstSeen: day, lastSeen: day)])
        table.adopt(missingFrom: [.init(server: server, id: "bob", fingerprint: other, firstSeen: day, lastSeen: day),
                                  .init(server: server, id: "carol", fingerprint: third, firstSeen: day, lastSeen: day)])
        #expect(table.whois(server: server, id: "bob")?.fingerprint == pinned)
        #expect(table.whois(server: server, id: "carol")?.fingerprint == third)
    }
}

@Suite struct KnownPeersFormatTests {
    @Test func datesAreISO8601UTC() {
        #expect(KnownPeersFormat.iso8601(0) == "1970-01-01T00:00:00Z")
        #expect(KnownPeersFormat.iso8601(day) == "2026-05-01T10:00:00Z")
        #expect(KnownPeersFormat.iso8601(951_782_400) == "2000-02-29T00:00:00Z")
        #expect(KnownPeersFormat.iso8601(-1) == "1969-12-31T23:59:59Z")
        for seconds: Int64 in [0, 1, 59, 86_399, 86_400, day, 951_782_400, 4_102_444_799, -86_401] {
            #expect(KnownPeersFormat.parseISO8601(KnownPeersFormat.iso8601(seconds)) == seconds)
        }
        for bad in ["2026-02-29T00:00:00Z", "2026-13-01T00:00:00Z", "2026-05-01 10:00:00Z", "2026-05-01T10:00:00+01:00",
                    "2026-05-01T24:00:00Z", "2026-05-01T10:00:00", "2026-5-01T10:00:00Z", "２026-05-01T10:00:00Z"] {
            #expect(KnownPeersFormat.parseISO8601(bad) == nil, "\(bad)")
        }
    }

    @Test func roundTrip() throws {
        let records = [
            KnownPeers.Record(server: server, id: "bob", fingerprint: pinned, firstSeen: day, lastSeen: day + 3600),
            KnownPeers.Record(server: "chat.example.org:10080", id: "élodie", fingerprint: other, firstSeen: 0, lastSeen: day),
        ]
        let text = KnownPeersFormat.encode(records)
        #expect(text.hasPrefix("# natchat known peers"))
        #expect(text.split(separator: "\n")[1] == "127.0.0.1:10080 bob 0f:4a:44:bc:e7:a7:40:08 2026-05-01T10:00:00Z 2026-05-01T11:00:00Z")
        #expect(try KnownPeersFormat.parse(text) == records)
        // Comments, blank lines, CRLF and tabs are read too.
        #expect(try KnownPeersFormat.parse("# mine\n\n127.0.0.1:10080\tbob\t\(pinned) 2026-05-01T10:00:00Z 2026-05-01T11:00:00Z\r\n")
            == [records[0]])
        #expect(try KnownPeersFormat.parse("") == [])
    }

    @Test(arguments: [
        ("127.0.0.1:10080 bob \(pinned) 2026-05-01T10:00:00Z", KnownPeersFormat.Problem.fieldCount(4)),
        ("127.0.0.1:10080 bob \(pinned) 2026-05-01T10:00:00Z 2026-05-01T10:00:00Z extra", .fieldCount(6)),
        ("127.0.0.1 bob \(pinned) 2026-05-01T10:00:00Z 2026-05-01T10:00:00Z", .invalidServer),
        ("127.0.0.1:99999 bob \(pinned) 2026-05-01T10:00:00Z 2026-05-01T10:00:00Z", .invalidServer),
        ("127.0.0.1:10080 \(String(repeating: "b", count: 33)) \(pinned) 2026-05-01T10:00:00Z 2026-05-01T10:00:00Z", .invalidID),
        ("127.0.0.1:10080 bob 0f:zz 2026-05-01T10:00:00Z 2026-05-01T10:00:00Z", .invalidFingerprint),
        ("127.0.0.1:10080 bob \(pinned) yesterday 2026-05-01T10:00:00Z", .invalidDate("yesterday")),
        ("127.0.0.1:10080 bob \(pinned) 2026-05-02T10:00:00Z 2026-05-01T10:00:00Z", .lastSeenBeforeFirstSeen),
    ])
    func aBadLineIsAnErrorNamingIt(line: String, problem: KnownPeersFormat.Problem) {
        let text = KnownPeersFormat.header + "\n127.0.0.1:10080 carol \(other) 2026-05-01T10:00:00Z 2026-05-01T10:00:00Z\n" + line + "\n"
        #expect(throws: KnownPeersFormat.ParseError(line: 3, problem: problem)) { try KnownPeersFormat.parse(text) }
    }

    @Test func aDuplicateIsAnError() {
        let line = "127.0.0.1:10080 bob \(pinned) 2026-05-01T10:00:00Z 2026-05-01T10:00:00Z\n"
        #expect(throws: KnownPeersFormat.ParseError(line: 2, problem: .duplicate(firstLine: 1))) {
            try KnownPeersFormat.parse(line + line)
        }
        #expect("\(KnownPeersFormat.ParseError(line: 2, problem: .duplicate(firstLine: 1)))" == "line 2: the same server and ID as line 1")
    }
}

@Suite(.serialized) struct KnownPeersFileTests {
    /// A fresh folder under /tmp (removed by the caller).
    private func temporaryFolder(_ name: String = #function) -> String {
        let folder = "/tmp/known-peers-test-\(getpid())-\(name.prefix { $0 != "(" })"
        _ = system("rm -rf '\(folder)'")
        #expect(mkdir(folder, 0o700) == 0)
        return folder
    }

    private func remove(_ folder: String) {
        _ = system("rm -rf '\(folder)'")
    }

    private func mode(_ path: String) -> mode_t {
        var info = stat()
        return stat(path, &info) == 0 ? info.st_mode & 0o777 : 0
    }

    private func contents(_ path: String) -> String? {
        let descriptor = open(path, O_RDONLY)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            guard count > 0 else { break }
            bytes += buffer[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private func writeFile(_ path: String, _ text: String, mode: mode_t = 0o600) {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode)
        let bytes = Array(text.utf8)
        _ = write(descriptor, bytes, bytes.count)
        close(descriptor)
        chmod(path, mode)
    }

    private let bob = KnownPeers.Record(server: server, id: "bob", fingerprint: pinned, firstSeen: day, lastSeen: day)
    private let carol = KnownPeers.Record(server: server, id: "carol", fingerprint: other, firstSeen: day, lastSeen: day)

    @Test func aMissingFileIsEmptyAndSaveCreatesItOwnerOnly() throws {
        let folder = temporaryFolder()
        defer { remove(folder) }
        let file = KnownPeersFile(path: folder + "/state/natchat/known_peers")
        #expect(try file.load() == [])
        try file.save([bob])
        #expect(mode(folder + "/state") == 0o700)
        #expect(mode(folder + "/state/natchat") == 0o700)
        #expect(mode(file.path) == 0o600)
        #expect(try file.load() == [bob])
        #expect(contents(file.path) == KnownPeersFormat.encode([bob]))
        #expect(access(file.temporaryPath, F_OK) != 0)
    }

    @Test func saveKeepsWhatAnotherProcessWrote() throws {
        let folder = temporaryFolder()
        defer { remove(folder) }
        let file = KnownPeersFile(path: folder + "/known_peers")
        try file.save([carol])
        var changed = bob
        changed.lastSeen += 60
        try file.save([changed])
        #expect(try file.load() == [changed, carol])
    }

    @Test func aBadLineRefusesToLoadAndToSave() throws {
        let folder = temporaryFolder()
        defer { remove(folder) }
        let file = KnownPeersFile(path: folder + "/known_peers")
        let text = KnownPeersFormat.header + "\nmy notes about bob\n"
        writeFile(file.path, text)
        #expect(throws: KnownPeersFile.FileError.malformed(path: file.path, .init(line: 2, problem: .fieldCount(4)))) {
            try file.load()
        }
        #expect(throws: KnownPeersFile.FileError.self) { try file.save([bob]) }
        #expect(contents(file.path) == text)
        let message = "\(KnownPeersFile.FileError.malformed(path: file.path, .init(line: 2, problem: .fieldCount(4))))"
        #expect(message.contains("line 2") && message.contains("--known-peers none"))
    }

    @Test func aFileOthersMayWriteIsRefused() throws {
        let folder = temporaryFolder()
        defer { remove(folder) }
        let file = KnownPeersFile(path: folder + "/known_peers")
        writeFile(file.path, KnownPeersFormat.encode([bob]), mode: 0o666)
        #expect(throws: KnownPeersFile.FileError.tooOpen(path: file.path)) { try file.load() }
    }

    @Test func aFailedWriteLeavesTheOldFile() throws {
        let folder = temporaryFolder()
        defer { remove(folder) }
        let file = KnownPeersFile(path: folder + "/known_peers")
        try file.save([bob])
        let before = contents(file.path)
        // The temporary file cannot be created (a folder is in its way): nothing is renamed.
        #expect(mkdir(file.temporaryPath, 0o700) == 0)
        #expect(throws: KnownPeersFile.FileError.self) { try file.save([bob, carol]) }
        #expect(contents(file.path) == before)
        #expect(try file.load() == [bob])
    }
}
