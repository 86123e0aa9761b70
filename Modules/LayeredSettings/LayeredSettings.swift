import Configuration
import Foundation

/// Where one effective setting came from, so that an operator can tell why a value is what
/// it is (`--print-config`) and an error can point at the line to fix.
public enum SettingSource: Equatable, Sendable, CustomStringConvertible {
    /// Given on the command line: it wins over everything else.
    case commandLine
    /// Read from an environment variable of that name.
    case environment(variable: String)
    /// Read from the configuration file at `path`, under `key`.
    case file(path: String, key: String)
    /// Nobody set it: the program's default.
    case defaultValue

    /// `command line`, `environment NATCHAT_SERVER_PORT`, `file /etc/x.json key port`, `default`.
    public var description: String {
        switch self {
        case .commandLine: return "command line"
        case .environment(let variable): return "environment \(variable)"
        case .file(let path, let key): return "file \(path) key \(key)"
        case .defaultValue: return "default"
        }
    }
}

/// A setting found in the environment or the file, as text, with where it was found. The
/// program converts the text with the same parser its command line uses, so a bad value
/// gives the same message whatever its source.
public struct FoundSetting: Equatable, Sendable {
    /// The value as text (a number in the file becomes its decimal text).
    public var value: String
    /// Where it was found.
    public var source: SettingSource

    /// Makes a found setting (tests and callers that add a layer of their own use it).
    public init(value: String, source: SettingSource) {
        self.value = value
        self.source = source
    }
}

/// Why the environment or the configuration file could not be used. Every case names the
/// file or variable, because the operator has to find it.
public enum SettingsError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The file could not be read (missing, unreadable).
    case unreadableFile(path: String, reason: String)
    /// The file is not a JSON object.
    case malformedFile(path: String, reason: String)
    /// The file has keys the program does not know: a typo must not be silently ignored.
    /// `suggestions` maps an unknown key to the known key it most likely meant.
    case unknownKeys(path: String, keys: [String], suggestions: [String: String])
    /// A known key in the file holds an object, an array or null instead of a string or number.
    case notAScalar(path: String, key: String)

    /// A one-line message for stderr.
    public var description: String {
        switch self {
        case .unreadableFile(let path, let reason):
            return "cannot read the configuration file \(path): \(reason)"
        case .malformedFile(let path, let reason):
            return "the configuration file \(path) is not a JSON object: \(reason)"
        case .unknownKeys(let path, let keys, let suggestions):
            let listed = keys.map { key in suggestions[key].map { "'\(key)' (did you mean '\($0)'?)" } ?? "'\(key)'" }
            return "unknown key\(keys.count == 1 ? "" : "s") in the configuration file \(path): \(listed.joined(separator: ", "))"
        case .notAScalar(let path, let key):
            return "file \(path) key \(key): the value must be a string or a number"
        }
    }
}

/// The two layers under a program's command line: environment variables and a JSON
/// configuration file, for a fixed list of keys (the program's long option names, such as
/// `keepalive-timeout`).
///
/// Why a type of its own: the precedence (command line, then environment, then file, then
/// default), the naming (`PREFIX_KEEPALIVE_TIMEOUT`) and the refusal of unknown file keys
/// are the same for every program and are tested here without starting one. The reading
/// itself is swift-configuration's (`EnvironmentVariablesProvider`, `JSONSnapshot`); this type
/// adds what it leaves to the application: which layer answered, and which file keys nobody
/// asked for.
///
/// The file is JSON because swift-configuration reads it with Foundation alone (its
/// default `JSON` trait); YAML would need its `YAML` trait and the Yams package.
@available(macOS 15, iOS 18, watchOS 11, tvOS 18, visionOS 2, *)
public struct LayeredSettings: Sendable {
    /// The keys the program knows, in its order.
    public let keys: [String]
    /// `NATCHAT_SERVER`: environment variable names are this, `_`, and the key upper-cased
    /// with `-` as `_`.
    public let environmentPrefix: String
    /// The configuration file's path, when there is one.
    public let filePath: String?
    /// Environment variables that start with the prefix but name no key (typos): the program
    /// should warn about them. Sorted.
    public let unknownEnvironmentVariables: [String]

    private let environment: EnvironmentVariablesProvider
    private let file: JSONSnapshot?

    /// Reads the environment and, when `filePath` is given, the file.
    ///
    /// - Parameters:
    ///   - keys: the known keys (kebab-case long option names).
    ///   - environmentPrefix: such as `NATCHAT_SERVER`.
    ///   - environment: the process's environment (a dictionary, so tests pass their own).
    ///   - filePath: the JSON file, or `nil` for none.
    ///   - ignoredEnvironmentVariables: names with the prefix that are not keys but are known
    ///     (such as `NATCHAT_SERVER_CONFIG`, which names the file): not reported as unknown.
    /// - Throws: ``SettingsError`` when the file cannot be read, is not a JSON object, or has
    ///   a key that is not in `keys` or a value that is not a string or a number.
    public init(keys: [String], environmentPrefix: String, environment: [String: String], filePath: String?,
                ignoredEnvironmentVariables: Set<String> = []) throws {
        self.keys = keys
        self.environmentPrefix = environmentPrefix
        self.filePath = filePath
        self.environment = EnvironmentVariablesProvider(environmentVariables: environment)
        let knownNames = Set(keys.map { Self.environmentVariableName(prefix: environmentPrefix, key: $0) })
        unknownEnvironmentVariables = environment.keys
            .filter { $0.hasPrefix(environmentPrefix + "_") && !knownNames.contains($0) && !ignoredEnvironmentVariables.contains($0) }
            .sorted()
        guard let filePath else {
            file = nil
            return
        }
        let bytes: [UInt8]
        do {
            bytes = Array(try Data(contentsOf: URL(fileURLWithPath: filePath)))
        } catch {
            throw SettingsError.unreadableFile(path: filePath, reason: Self.reason(error))
        }
        try Self.checkKeys(bytes, path: filePath, known: keys)
        do {
            file = try JSONSnapshot(data: bytes.span.bytes, providerName: filePath, parsingOptions: .default)
        } catch {
            throw SettingsError.malformedFile(path: filePath, reason: "\(error)")
        }
    }

    /// `NATCHAT_SERVER_KEEPALIVE_TIMEOUT` for `keepalive-timeout`: the name
    /// swift-configuration's `EnvironmentVariablesProvider` reads for the key
    /// `natchat.server.keepalive-timeout` when the prefix is `NATCHAT_SERVER`.
    public func environmentVariableName(for key: String) -> String {
        Self.environmentVariableName(prefix: environmentPrefix, key: key)
    }

    /// The environment variable name for `key` under `prefix` (see the instance method).
    public static func environmentVariableName(prefix: String, key: String) -> String {
        prefix + "_" + key.uppercased().map { $0.isLetter || $0.isNumber ? String($0) : "_" }.joined()
    }

    /// The value of `key` from the environment, else from the file, else `nil` (the program
    /// then uses its default). The command line is the program's: it asks only for keys not
    /// given there.
    public func lookup(_ key: String) -> FoundSetting? {
        let environmentKey = AbsoluteConfigKey(environmentPrefix.lowercased().split(separator: "_").map(String.init) + [key])
        if let result = try? environment.value(forKey: environmentKey, type: .string),
           case .string(let text)? = result.value?.content {
            return FoundSetting(value: text, source: .environment(variable: result.encodedKey))
        }
        guard let file, let filePath else { return nil }
        let fileKey = AbsoluteConfigKey([key])
        // A JSON string, or a number given as its decimal text (an integer stays one: 10080,
        // not 10080.0, so an integer option parses it).
        for type in [ConfigType.string, .int, .double] {
            guard let result = try? file.value(forKey: fileKey, type: type), let content = result.value?.content else { continue }
            let text: String
            switch content {
            case .string(let value): text = value
            case .int(let value): text = String(value)
            case .double(let value): text = String(value)
            default: continue
            }
            return FoundSetting(value: text, source: .file(path: filePath, key: key))
        }
        return nil
    }

    /// Refuses a file whose top level is not an object, has keys not in `known`, or holds
    /// an object, array or null under a known key (which swift-configuration would read as
    /// other, dotted keys or as nothing: silently ignored).
    private static func checkKeys(_ bytes: [UInt8], path: String, known: [String]) throws {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(bytes))
        } catch {
            throw SettingsError.malformedFile(path: path, reason: reason(error))
        }
        guard let dictionary = object as? [String: Any] else {
            throw SettingsError.malformedFile(path: path, reason: "the top level must be an object { \"key\": value, ... }")
        }
        let knownSet = Set(known)
        let unknown = dictionary.keys.filter { !knownSet.contains($0) }.sorted()
        if !unknown.isEmpty {
            var suggestions: [String: String] = [:]
            for key in unknown {
                if let nearest = nearestKey(to: key, among: known) { suggestions[key] = nearest }
            }
            throw SettingsError.unknownKeys(path: path, keys: unknown, suggestions: suggestions)
        }
        for key in dictionary.keys.sorted() {
            let value = dictionary[key]
            if value is String || value is NSNumber || value is Int || value is Double || value is Bool { continue }
            throw SettingsError.notAScalar(path: path, key: key)
        }
    }

    /// The known key closest to `key` by edit distance, when it is close (at most a third of
    /// its length, at least 2 for a swapped pair, at most 3 edits): a likely typo.
    static func nearestKey(to key: String, among known: [String]) -> String? {
        let limit = min(3, max(2, key.count / 3))
        var best: (key: String, distance: Int)?
        for candidate in known {
            let distance = editDistance(Array(key), Array(candidate))
            if distance <= limit, distance < (best?.distance ?? Int.max) { best = (candidate, distance) }
        }
        return best?.key
    }

    /// Levenshtein distance (insertions, deletions, substitutions), O(n·m) with two rows.
    static func editDistance(_ a: [Character], _ b: [Character]) -> Int {
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }

    private static func reason(_ error: any Error) -> String {
        let nsError = error as NSError
        if let underlying = nsError.userInfo[NSUnderlyingErrorKey] as? NSError {
            return underlying.localizedDescription
        }
        return nsError.localizedDescription
    }
}
