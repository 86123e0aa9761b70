import Foundation
import JSONLogging
import Logging
import Synchronization
import Testing

// The encoding (fields, escaping, unicode, metadata flattening and collisions, the
// timestamp) checked by parsing the lines back with Foundation's JSON parser, and whole lines
// from many threads at once.

/// Parses one line as a JSON object of strings.
private func parse(_ line: String) throws -> [String: String] {
    #expect(line.hasSuffix("\n"))
    #expect(line.dropLast().contains("\n") == false, "one line per event")
    let object = try JSONSerialization.jsonObject(with: Data(line.utf8))
    return try #require(object as? [String: String])
}

private let instant = Date(timeIntervalSince1970: 1_796_465_550.123_9)  // 2026-12-05T10:12:30.123Z

@Suite struct JSONLineLogHandlerTests {
    @Test func theLineHasTheFieldsOperatorsFilterOn() throws {
        let line = JSONLineLogHandler.encodeLine(date: instant, level: .warning, label: "natchat.server", message: "relay limited",
                                                 metadata: ["client": "alice", "count": .stringConvertible(3)])
        let fields = try parse(line)
        #expect(fields == ["ts": "2026-12-05T10:12:30.123Z", "level": "warning", "label": "natchat.server",
                           "msg": "relay limited", "client": "alice", "count": "3"])
        #expect(line.hasPrefix(#"{"ts":"2026-12-05T10:12:30.123Z","level":"warning","label":"natchat.server","msg":"relay limited","#))
    }

    @Test func quotesBackslashesNewlinesAndControlCharactersAreEscaped() throws {
        let nasty = "say \"hi\"\\ then\nnew line\r\ttab\u{0}nul\u{1B}[31mred\u{7F}\u{2028}"
        let line = JSONLineLogHandler.encodeLine(date: instant, level: .info, label: "l", message: nasty, metadata: ["k\"ey\n": .string(nasty)])
        let fields = try parse(line)
        #expect(fields["msg"] == nasty)
        #expect(fields["k\"ey\n"] == nasty)
        #expect(JSONLineLogHandler.quoted("a\"b\\c\n\u{1}") == #""a\"b\\c\n\u0001""#)
        #expect(!line.unicodeScalars.contains { $0.value < 0x20 && $0 != "\n" }, "no raw control character")
    }

    @Test func unicodeIsWrittenAsItselfAndReadsBack() throws {
        let text = "héllo 世界 🧊 Ω"
        let line = JSONLineLogHandler.encodeLine(date: instant, level: .info, label: "ünï", message: text, metadata: [:])
        #expect(line.contains(text))
        #expect(try parse(line)["msg"] == text)
        #expect(try parse(line)["label"] == "ünï")
    }

    @Test func nestedMetadataIsFlattenedAndReservedNamesAreKept() throws {
        let line = JSONLineLogHandler.encodeLine(date: instant, level: .error, label: "l", message: "m",
                                                 metadata: ["peer": ["id": "bob", "port": .stringConvertible(10080)],
                                                            "tags": ["a", "b"], "msg": "shadow", "level": "shadow too"])
        let fields = try parse(line)
        #expect(fields["peer.id"] == "bob")
        #expect(fields["peer.port"] == "10080")
        #expect(fields["tags"] == "a,b")
        #expect(fields["msg"] == "m")
        #expect(fields["meta.msg"] == "shadow")
        #expect(fields["level"] == "error")
        #expect(fields["meta.level"] == "shadow too")
    }

    @Test func theSourceLocationIsWrittenWhenAsked() throws {
        let line = JSONLineLogHandler.encodeLine(date: instant, level: .debug, label: "l", message: "m", metadata: [:],
                                                 source: "RendezvousServer", file: "Server.swift:42")
        let fields = try parse(line)
        #expect(fields["source"] == "RendezvousServer")
        #expect(fields["file"] == "Server.swift:42")
    }

    @Test func timestampsAreRFC3339UTCWithMilliseconds() {
        #expect(JSONLineLogHandler.timestamp(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00.000Z")
        #expect(JSONLineLogHandler.timestamp(Date(timeIntervalSince1970: 951_782_400.5)) == "2000-02-29T00:00:00.500Z")
        #expect(JSONLineLogHandler.timestamp(Date(timeIntervalSince1970: -0.001)) == "1969-12-31T23:59:59.999Z")
    }

    @Test func theHandlerMergesMetadataAndHonoursTheLevel() throws {
        let lines = Mutex<[String]>([])
        var handler = JSONLineLogHandler(label: "natchat.server", metadataProvider: Logger.MetadataProvider { ["request": "r1"] }) { line in
            lines.withLock { $0.append(line) }
        }
        handler.logLevel = .notice
        handler[metadataKey: "server"] = "s1"
        let logger = Logger(label: "natchat.server") { _ in handler }
        logger.info("dropped: below notice")
        logger.notice("kept", metadata: ["server": "override", "client": "alice"])
        let written = lines.withLock { $0 }
        #expect(written.count == 1)
        let fields = try parse(try #require(written.first))
        #expect(fields["msg"] == "kept")
        #expect(fields["level"] == "notice")
        #expect(fields["server"] == "override")
        #expect(fields["client"] == "alice")
        #expect(fields["request"] == "r1")
        #expect(fields["source"] == nil)
    }

    @Test func linesFromManyThreadsStayWhole() async throws {
        let lines = Mutex<[String]>([])
        let handler = JSONLineLogHandler(label: "l") { line in lines.withLock { $0.append(line) } }
        let logger = Logger(label: "l") { _ in handler }
        await withTaskGroup(of: Void.self) { group in
            for task in 0..<8 {
                group.addTask {
                    for index in 0..<200 { logger.info("task \(task) line \(index)", metadata: ["payload": .string(String(repeating: "x", count: 300))]) }
                }
            }
        }
        let written = lines.withLock { $0 }
        #expect(written.count == 1600)
        for line in written { _ = try parse(line) }
    }
}
