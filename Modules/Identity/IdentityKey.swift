#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Crypto
import Foundation
import Wire

/// A client's long-term identity: an Ed25519 key that signs registrations and an X25519
/// key that agrees session and pair keys. Kept in one file, owner-only.
public struct IdentityKey: Sendable {
    public let signing: Curve25519.Signing.PrivateKey
    public let agreement: Curve25519.KeyAgreement.PrivateKey

    public init(signing: Curve25519.Signing.PrivateKey = .init(), agreement: Curve25519.KeyAgreement.PrivateKey = .init()) {
        self.signing = signing
        self.agreement = agreement
    }

    /// The public half, as registered with the server and given to peers.
    public var publicKeys: PublicKeys {
        PublicKeys(signing: Array(signing.publicKey.rawRepresentation), agreement: Array(agreement.publicKey.rawRepresentation))
    }

    /// A short fingerprint for people to compare: the first 8 bytes of SHA-256 of the signing key.
    public var fingerprint: String { Self.fingerprint(of: publicKeys) }

    public static func fingerprint(of keys: PublicKeys) -> String {
        SHA256.hash(data: keys.signing).prefix(8).map { byte in
            let hex = String(byte, radix: 16)
            return hex.count == 1 ? "0" + hex : hex
        }.joined(separator: ":")
    }

    /// Why an identity file could not be used.
    public enum FileError: Error, Hashable, Sendable, CustomStringConvertible {
        case unreadable(String, errno: Int32)
        case malformed(String)
        case unwritable(String, errno: Int32)
        case tooOpen(String)

        public var description: String {
            switch self {
            case .unreadable(let path, let code): "cannot read identity \(path): \(String(cString: strerror(code)))"
            case .malformed(let path): "identity file \(path) is not a natchat identity"
            case .unwritable(let path, let code): "cannot write identity \(path): \(String(cString: strerror(code)))"
            case .tooOpen(let path): "identity file \(path) is readable by others; chmod 600 it"
            }
        }
    }

    static let header = "natchat-identity-v1"

    /// Loads the identity at `path`, creating it (and its folder, mode 0700; file 0600) on first run.
    public static func loadOrCreate(at path: String) throws(FileError) -> (key: IdentityKey, created: Bool) {
        if access(path, F_OK) == 0 { return (try load(from: path), false) }
        let key = IdentityKey()
        do {
            try key.save(to: path)
        } catch .unwritable(_, let code) where code == EEXIST {
            // Another natchat created it a moment ago: use that one.
            return (try load(from: path), false)
        }
        return (key, true)
    }

    public static func load(from path: String) throws(FileError) -> IdentityKey {
        var info = stat()
        guard stat(path, &info) == 0 else { throw .unreadable(path, errno: errno) }
        guard info.st_mode & 0o077 == 0 else { throw .tooOpen(path) }
        guard let file = fopen(path, "r") else { throw .unreadable(path, errno: errno) }
        defer { fclose(file) }
        var buffer = [CChar](repeating: 0, count: 512)
        var text = ""
        while fgets(&buffer, Int32(buffer.count), file) != nil {
            text += String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if text.utf8.count > 4096 { throw .malformed(path) }
        }
        let lines = text.split(separator: "\n").map(String.init)
        guard lines.count >= 3, lines[0] == header,
              let signingBytes = hexBytes(lines[1]), let agreementBytes = hexBytes(lines[2]),
              let signing = try? Curve25519.Signing.PrivateKey(rawRepresentation: signingBytes),
              let agreement = try? Curve25519.KeyAgreement.PrivateKey(rawRepresentation: agreementBytes)
        else { throw .malformed(path) }
        return IdentityKey(signing: signing, agreement: agreement)
    }

    public func save(to path: String) throws(FileError) {
        if let slash = path.lastIndex(of: "/") {
            var folder = ""
            for component in path[..<slash].split(separator: "/") {
                folder += "/" + component
                mkdir(folder, 0o700)
            }
        }
        let text = [Self.header, Self.hex(signing.rawRepresentation), Self.hex(agreement.rawRepresentation), ""].joined(separator: "\n")
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard descriptor >= 0 else { throw .unwritable(path, errno: errno) }
        defer { close(descriptor) }
        let bytes = Array(text.utf8)
        guard write(descriptor, bytes, bytes.count) == bytes.count else { throw .unwritable(path, errno: errno) }
    }

    /// `$XDG_CONFIG_HOME/natchat/identity`, else `~/.config/natchat/identity`.
    public static func defaultPath() -> String? {
        let environment = { (name: String) -> String? in getenv(name).map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 } }
        if let config = environment("XDG_CONFIG_HOME") { return config + "/natchat/identity" }
        if let home = environment("HOME") { return home + "/.config/natchat/identity" }
        return nil
    }

    static func hex(_ data: some DataProtocol) -> String {
        data.map { byte in
            let digits = String(byte, radix: 16)
            return digits.count == 1 ? "0" + digits : digits
        }.joined()
    }

    static func hexBytes(_ text: String) -> [UInt8]? {
        let characters = Array(text.utf8)
        guard characters.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        var index = 0
        while index < characters.count {
            guard let high = hexValue(characters[index]), let low = hexValue(characters[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return bytes
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
