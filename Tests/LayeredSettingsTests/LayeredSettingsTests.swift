import Foundation
import LayeredSettings
import Testing

// The environment over the file, names and sources, and the file's refusals (unknown keys,
// non-scalar values, not JSON, missing), with real files in a temporary folder.

private let keys = ["port", "bind", "keepalive-timeout", "log-format"]
private let prefix = "NATCHAT_SERVER"

/// A file with `text` in a new temporary folder; removed by `remove`.
private struct TemporaryFile {
    let folder: URL
    let path: String

    init(_ text: String, name: String = "natchat-server.json") throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("layered-settings-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        path = folder.appendingPathComponent(name).path
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
    }

    func remove() { try? FileManager.default.removeItem(at: folder) }
}

@Suite struct LayeredSettingsTests {
    @Test func environmentNamesAreThePrefixAndTheUpperSnakeKey() {
        #expect(LayeredSettings.environmentVariableName(prefix: prefix, key: "keepalive-timeout") == "NATCHAT_SERVER_KEEPALIVE_TIMEOUT")
        #expect(LayeredSettings.environmentVariableName(prefix: prefix, key: "port") == "NATCHAT_SERVER_PORT")
    }

    @Test func theEnvironmentWinsOverTheFileWhichWinsOverNothing() throws {
        let file = try TemporaryFile(#"{"port": 7000, "bind": "127.0.0.1", "keepalive-timeout": 12.5}"#)
        defer { file.remove() }
        let settings = try LayeredSettings(keys: keys, environmentPrefix: prefix,
                                           environment: ["NATCHAT_SERVER_PORT": "8000", "PATH": "/bin"], filePath: file.path)
        #expect(settings.lookup("port") == FoundSetting(value: "8000", source: .environment(variable: "NATCHAT_SERVER_PORT")))
        #expect(settings.lookup("bind") == FoundSetting(value: "127.0.0.1", source: .file(path: file.path, key: "bind")))
        #expect(settings.lookup("keepalive-timeout") == FoundSetting(value: "12.5", source: .file(path: file.path, key: "keepalive-timeout")))
        #expect(settings.lookup("log-format") == nil)
    }

    @Test func anIntegerInTheFileStaysAnInteger() throws {
        let file = try TemporaryFile(#"{"port": 10080, "keepalive-timeout": 30}"#)
        defer { file.remove() }
        let settings = try LayeredSettings(keys: keys, environmentPrefix: prefix, environment: [:], filePath: file.path)
        #expect(settings.lookup("port")?.value == "10080")
        #expect(settings.lookup("keepalive-timeout")?.value == "30")
    }

    @Test func withoutAFileOnlyTheEnvironmentAnswers() throws {
        let settings = try LayeredSettings(keys: keys, environmentPrefix: prefix,
                                           environment: ["NATCHAT_SERVER_LOG_FORMAT": "json"], filePath: nil)
        #expect(settings.lookup("log-format") == FoundSetting(value: "json", source: .environment(variable: "NATCHAT_SERVER_LOG_FORMAT")))
        #expect(settings.lookup("port") == nil)
    }

    @Test func unknownEnvironmentVariablesWithThePrefixAreListed() throws {
        let settings = try LayeredSettings(keys: keys, environmentPrefix: prefix,
                                           environment: ["NATCHAT_SERVER_PROT": "1", "NATCHAT_SERVER_CONFIG": "/x", "NATCHAT_SERVER_PORT": "1", "OTHER_PORT": "2"],
                                           filePath: nil, ignoredEnvironmentVariables: ["NATCHAT_SERVER_CONFIG"])
        #expect(settings.unknownEnvironmentVariables == ["NATCHAT_SERVER_PROT"])
    }

    @Test func anUnknownKeyInTheFileIsRefusedWithASuggestion() throws {
        let file = try TemporaryFile(#"{"prot": 7000, "bind": "0.0.0.0", "colour": "red"}"#)
        defer { file.remove() }
        #expect(throws: SettingsError.unknownKeys(path: file.path, keys: ["colour", "prot"], suggestions: ["prot": "port"])) {
            try LayeredSettings(keys: keys, environmentPrefix: prefix, environment: [:], filePath: file.path)
        }
        let error = SettingsError.unknownKeys(path: file.path, keys: ["colour", "prot"], suggestions: ["prot": "port"])
        #expect(error.description.contains("'prot' (did you mean 'port'?)"))
        #expect(error.description.contains(file.path))
    }

    @Test func aNestedObjectUnderAKnownKeyIsRefused() throws {
        let file = try TemporaryFile(#"{"port": {"value": 1}}"#)
        defer { file.remove() }
        #expect(throws: SettingsError.notAScalar(path: file.path, key: "port")) {
            try LayeredSettings(keys: keys, environmentPrefix: prefix, environment: [:], filePath: file.path)
        }
    }

    @Test func aFileThatIsNotAJSONObjectIsRefused() throws {
        for text in ["port = 1", "[1, 2]", ""] {
            let file = try TemporaryFile(text)
            defer { file.remove() }
            do {
                _ = try LayeredSettings(keys: keys, environmentPrefix: prefix, environment: [:], filePath: file.path)
                Issue.record("accepted \(text.debugDescription)")
            } catch let error as SettingsError {
                guard case .malformedFile(let path, _) = error else { Issue.record("\(error)"); continue }
                #expect(path == file.path)
            }
        }
    }

    @Test func aMissingFileIsRefusedNamingIt() {
        let path = "/nonexistent-\(UUID().uuidString)/natchat-server.json"
        do {
            _ = try LayeredSettings(keys: keys, environmentPrefix: prefix, environment: [:], filePath: path)
            Issue.record("accepted a missing file")
        } catch let error as SettingsError {
            guard case .unreadableFile(let named, _) = error else { Issue.record("\(error)"); return }
            #expect(named == path)
            #expect(error.description.contains(path))
        } catch {
            Issue.record("\(error)")
        }
    }

    @Test func sourcesDescribeThemselvesForPrintConfig() {
        #expect(SettingSource.commandLine.description == "command line")
        #expect(SettingSource.environment(variable: "NATCHAT_SERVER_PORT").description == "environment NATCHAT_SERVER_PORT")
        #expect(SettingSource.file(path: "/etc/n.json", key: "port").description == "file /etc/n.json key port")
        #expect(SettingSource.defaultValue.description == "default")
    }
}
