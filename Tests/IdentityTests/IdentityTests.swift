#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Addressing
import Crypto
import Foundation
import Testing
import Identity
import Wire

private func id(_ text: String) -> ClientID { try! ClientID(text) }
private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }
private let alice = id("alice"), bob = id("bob"), carol = id("carol")

/// A deterministic identity: both private keys from a one-byte seed.
private func identity(_ seed: UInt8) -> IdentityKey {
    IdentityKey(signing: try! Curve25519.Signing.PrivateKey(rawRepresentation: Array(repeating: seed, count: 32)),
                agreement: try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: Array(repeating: seed &+ 0x80, count: 32)))
}

/// A fresh folder under the system's temporary directory, removed by the caller.
private func temporaryFolder() -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("natchat-identity-\(UUID().uuidString)").path
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

private func permissions(_ path: String) -> mode_t {
    var info = stat()
    guard stat(path, &info) == 0 else { return 0xFFFF }
    return info.st_mode & 0o777
}

private func writeFile(_ text: String, to path: String, mode: mode_t) {
    _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
    chmod(path, mode)
}

private func loadError(_ path: String) -> IdentityKey.FileError? {
    do {
        _ = try IdentityKey.load(from: path)
        return nil
    } catch {
        return error
    }
}

@Suite("IdentityKey files")
struct IdentityFileTests {
    @Test func saveAndLoadRoundTripOwnerOnly() throws {
        let folder = temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/config/natchat/identity"
        let key = identity(1)
        try key.save(to: path)
        #expect(permissions(path) == 0o600)
        #expect(permissions(folder + "/config/natchat") == 0o700)
        #expect(permissions(folder + "/config") == 0o700)
        let loaded = try IdentityKey.load(from: path)
        #expect(loaded.publicKeys == key.publicKeys)
        #expect(loaded.signing.rawRepresentation == key.signing.rawRepresentation)
        #expect(loaded.agreement.rawRepresentation == key.agreement.rawRepresentation)
        #expect(loaded.fingerprint == key.fingerprint)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.hasPrefix("natchat-identity-v1\n"))
        #expect(text.split(separator: "\n").count == 3)
    }

    @Test func saveRefusesToOverwrite() throws {
        let folder = temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/identity"
        try identity(1).save(to: path)
        #expect(throws: IdentityKey.FileError.unwritable(path, errno: EEXIST)) {
            try identity(2).save(to: path)
        }
        #expect(try IdentityKey.load(from: path).publicKeys == identity(1).publicKeys)
    }

    @Test func loadOrCreate() throws {
        let folder = temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/natchat/identity"
        let first = try IdentityKey.loadOrCreate(at: path)
        #expect(first.created)
        #expect(permissions(path) == 0o600)
        let second = try IdentityKey.loadOrCreate(at: path)
        #expect(!second.created)
        #expect(second.key.publicKeys == first.key.publicKeys)
    }

    @Test func groupOrWorldReadableFileIsRefused() throws {
        let folder = temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/identity"
        try identity(3).save(to: path)
        for loose: mode_t in [0o640, 0o604, 0o660, 0o644, 0o610] {
            chmod(path, loose)
            #expect(loadError(path) == .tooOpen(path), "mode \(String(loose, radix: 8))")
        }
        chmod(path, 0o400)
        #expect(loadError(path) == nil)
    }

    @Test func malformedFiles() throws {
        let folder = temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let good = identity(4)
        try good.save(to: folder + "/good")
        let lines = try String(contentsOfFile: folder + "/good", encoding: .utf8).split(separator: "\n").map(String.init)
        let cases: [String: String] = [
            "empty": "",
            "garbage": "hello world\n",
            "wrong header": "natchat-identity-v2\n\(lines[1])\n\(lines[2])\n",
            "missing agreement": "natchat-identity-v1\n\(lines[1])\n",
            "odd hex": "natchat-identity-v1\n\(lines[1].dropLast())\n\(lines[2])\n",
            "not hex": "natchat-identity-v1\n\(lines[1].dropLast(2))zz\n\(lines[2])\n",
            "short key": "natchat-identity-v1\n\(lines[1].prefix(62))\n\(lines[2])\n",
            "long key": "natchat-identity-v1\n\(lines[1])00\n\(lines[2])\n",
            "huge": "natchat-identity-v1\n" + String(repeating: "a", count: 10_000) + "\n",
        ]
        for (name, text) in cases {
            let path = folder + "/" + name.replacingOccurrences(of: " ", with: "-")
            writeFile(text, to: path, mode: 0o600)
            #expect(loadError(path) == .malformed(path), "\(name)")
        }
        // Upper-case hex and a trailing line without newline are fine.
        let path = folder + "/upper"
        writeFile("natchat-identity-v1\n\(lines[1].uppercased())\n\(lines[2])", to: path, mode: 0o600)
        #expect(try IdentityKey.load(from: path).publicKeys == good.publicKeys)
    }

    @Test func missingFileIsUnreadable() {
        let path = "/nonexistent-natchat-\(UUID().uuidString)/identity"
        #expect(loadError(path) == .unreadable(path, errno: ENOENT))
    }

    @Test func fingerprintFormat() {
        let fingerprint = identity(5).fingerprint
        #expect(fingerprint.count == 23)
        #expect(fingerprint.split(separator: ":").count == 8)
        #expect(fingerprint.allSatisfy { $0 == ":" || $0.isHexDigit && !$0.isUppercase })
        #expect(fingerprint == IdentityKey.fingerprint(of: identity(5).publicKeys))
        #expect(fingerprint != identity(6).fingerprint)
        #expect(identity(5).publicKeys.signing.count == 32)
        #expect(identity(5).publicKeys.agreement.count == 32)
    }
}

@Suite("SessionCrypto")
struct SessionCryptoTests {
    private let key = KeyBytes(Array(repeating: 0x42, count: 32))
    private let otherKey = KeyBytes(Array(repeating: 0x43, count: 32))

    @Test func tagAndVerify() {
        let bytes: [UInt8] = Array("natchat".utf8)
        let tag = SessionCrypto.tag(bytes, key: key)
        #expect(SessionCrypto.verify(tag, over: bytes, key: key))
        #expect(!SessionCrypto.verify(tag, over: bytes, key: otherKey))
        #expect(SessionCrypto.tag(bytes, key: key) == tag) // deterministic
        for index in bytes.indices {
            var tampered = bytes
            tampered[index] ^= 0x01
            #expect(!SessionCrypto.verify(tag, over: tampered, key: key), "byte \(index)")
        }
        #expect(!SessionCrypto.verify(Token128(high: tag.high, low: tag.low ^ 1), over: bytes, key: key))
        // HMAC-SHA256 truncated to its first 128 bits.
        let mac = Array(HMAC<SHA256>.authenticationCode(for: bytes, using: SymmetricKey(data: key.bytes)))
        #expect(tag.bytes == Array(mac.prefix(16)))
    }

    @Test func tokenBytesRoundTrip() {
        let token = Token128(high: 0x0102_0304_0506_0708, low: 0x1112_1314_1516_1718)
        #expect(token.bytes == [1, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18])
        #expect(Token128(bytes: token.bytes) == token)
        #expect(Token128(bytes: [UInt8]()) == .zero)
    }

    @Test func sealedSessionMessages() throws {
        let message = ExtendedMessage.keepAlive(id: alice, natKind: .endpointIndependent)
        let bytes = SessionCrypto.sealed(message, counter: 9, key: key)
        // The message, the counter, then the tag over both.
        #expect(bytes.count == message.encode().count + 24)
        #expect(Array(bytes.prefix(message.encode().count)) == message.encode())
        #expect(Token128(bytes: bytes.suffix(16)) == SessionCrypto.tag(bytes.dropLast(16), key: key))
        #expect(SessionCrypto.verifyAuthenticated(bytes, key: key))
        #expect(!SessionCrypto.verifyAuthenticated(bytes, key: otherKey))
        for index in bytes.indices {
            var tampered = bytes
            tampered[index] ^= 0x80
            #expect(!SessionCrypto.verifyAuthenticated(tampered, key: key), "byte \(index)")
        }
        let datagram = try ExtendedDatagram.decode(bytes)
        #expect(datagram.message == message)
        guard case .session(let counter, let tag) = datagram.trailer else { Issue.record("no session trailer"); return }
        #expect(counter == 9)
        #expect(tag != .zero)
        // A message without a tag trailer never verifies.
        let challenge = ExtendedMessage.challenge(cookie: Token128(high: 1, low: 2))
        #expect(!SessionCrypto.verifyAuthenticated(challenge.encode(), key: key))
        #expect(!SessionCrypto.verifyAuthenticated(Array(bytes.suffix(16)), key: key))
    }

    @Test func sealedPeerMessages() throws {
        let message = ExtendedMessage.ping(from: alice, to: try ClientID("bob"), transaction: 5)
        let bytes = SessionCrypto.sealed(message, key: key)
        #expect(bytes.count == message.encode().count + 16)
        #expect(SessionCrypto.verifyAuthenticated(bytes, key: key))
        #expect(!SessionCrypto.verifyAuthenticated(bytes, key: otherKey))
        #expect(try ExtendedDatagram.decode(bytes) == ExtendedDatagram(message, trailer: .pair(tag: Token128(bytes: bytes.suffix(16)))))
    }

    @Test func signedRegistration() throws {
        let me = identity(7)
        let cookie = Token128(high: 0xC00C, low: 0x1E)
        let bytes = SessionCrypto.signedRegistration(id: alice, cookie: cookie, privateEndpoints: [ep("10.0.0.5:10081")],
                                                     natKind: .endpointIndependent, identity: me)
        let datagram = try ExtendedDatagram.decode(bytes)
        guard case .register(let decodedID, let decodedCookie, let endpoints, let kind, let keys, let subscribe) = datagram.message,
              case .signature(let signature) = datagram.trailer else {
            Issue.record("not a registration"); return
        }
        #expect(decodedID == alice)
        #expect(decodedCookie == cookie)
        #expect(endpoints == [ep("10.0.0.5:10081")])
        #expect(kind == .endpointIndependent)
        #expect(keys == me.publicKeys)
        #expect(signature.count == 64)
        #expect(subscribe)
        #expect(SessionCrypto.verifyRegistration(bytes, keys: keys, signature: signature))
        // Another key does not verify it.
        #expect(!SessionCrypto.verifyRegistration(bytes, keys: identity(8).publicKeys, signature: signature))
        // A flipped bit anywhere in the signed part, or in the signature, fails.
        for index in 0..<(bytes.count - 64) {
            var tampered = bytes
            tampered[index] ^= 0x04
            #expect(!SessionCrypto.verifyRegistration(tampered, keys: keys, signature: signature), "byte \(index)")
        }
        var badSignature = signature
        badSignature[10] ^= 0x01
        #expect(!SessionCrypto.verifyRegistration(bytes, keys: keys, signature: badSignature))
        // Malformed inputs are refused, not trapped on.
        #expect(!SessionCrypto.verifyRegistration(Array(bytes.prefix(64)), keys: keys, signature: signature))
        #expect(!SessionCrypto.verifyRegistration(bytes, keys: PublicKeys(signing: [1, 2, 3], agreement: []), signature: signature))
    }

    @Test func sessionKeyAgreement() {
        let client = identity(9), server = identity(10)
        let cookie = Token128(high: 1, low: 2)
        let clientSide = SessionCrypto.sessionKey(privateKey: client.agreement, peerPublicKey: server.publicKeys.agreement,
                                                  cookie: cookie, id: alice)
        let serverSide = SessionCrypto.sessionKey(privateKey: server.agreement, peerPublicKey: client.publicKeys.agreement,
                                                  cookie: cookie, id: alice)
        #expect(clientSide != nil)
        #expect(clientSide == serverSide)
        #expect(clientSide?.bytes.count == 32)
        let otherCookie = SessionCrypto.sessionKey(privateKey: client.agreement, peerPublicKey: server.publicKeys.agreement,
                                                   cookie: Token128(high: 1, low: 3), id: alice)
        #expect(otherCookie != clientSide)
        let otherID = SessionCrypto.sessionKey(privateKey: client.agreement, peerPublicKey: server.publicKeys.agreement,
                                               cookie: cookie, id: bob)
        #expect(otherID != clientSide)
        #expect(SessionCrypto.sessionKey(privateKey: client.agreement, peerPublicKey: [1, 2, 3], cookie: cookie, id: alice) == nil)
    }

    @Test func keyBytesCompareAndHashByValue() {
        let a = KeyBytes(Array(repeating: 7, count: 32)), b = KeyBytes(Array(repeating: 7, count: 32))
        let c = KeyBytes(Array(repeating: 7, count: 31) + [8])
        #expect(a == b)
        #expect(a.hashValue == b.hashValue)
        #expect(a != c)
        #expect(Set([a, b, c]).count == 2)
        #expect(a.bytes == Array(repeating: 7, count: 32))
    }

    /// The server's nonce salts the key with the cookie: both sides agree on it, and another
    /// nonce (a new session with the same cookie) gives another key.
    @Test func sessionKeyDependsOnTheNonce() throws {
        let client = identity(9), server = identity(10)
        let cookie = Token128(high: 1, low: 2)
        let nonce = Token128(high: 0xAAAA, low: 0x5555)
        func key(_ nonce: Token128, cookie: Token128 = cookie) -> KeyBytes? {
            SessionCrypto.sessionKey(privateKey: client.agreement, peerPublicKey: server.publicKeys.agreement, cookie: cookie,
                                     nonce: nonce, id: alice)
        }
        let clientSide = try #require(key(nonce))
        let serverSide = SessionCrypto.sessionKey(privateKey: server.agreement, peerPublicKey: client.publicKeys.agreement,
                                                  cookie: cookie, nonce: nonce, id: alice)
        #expect(clientSide == serverSide)
        #expect(clientSide.bytes.count == 32)
        #expect(key(nonce) == clientSide) // deterministic
        // Another nonce, the zero nonce, the default (zero): other keys.
        #expect(key(Token128(high: 0xAAAA, low: 0x5554)) != clientSide)
        #expect(key(.zero) != clientSide)
        #expect(key(.zero) == SessionCrypto.sessionKey(privateKey: client.agreement, peerPublicKey: server.publicKeys.agreement,
                                                       cookie: cookie, id: alice))
        // The nonce is not interchangeable with the cookie.
        #expect(key(cookie, cookie: nonce) != clientSide)
        // Two sessions with the same cookie and different nonces do not share a key.
        var random = SystemRandomNumberGenerator()
        let keys = Set((0..<16).compactMap { _ in key(Token128.random(using: &random)) })
        #expect(keys.count == 16)
    }

    @Test func pairKeyIsSymmetric() {
        let a = identity(11), b = identity(12), c = identity(13)
        let ab = SessionCrypto.pairKey(privateKey: a.agreement, peerPublicKey: b.publicKeys.agreement, selfID: alice, peerID: bob)
        let ba = SessionCrypto.pairKey(privateKey: b.agreement, peerPublicKey: a.publicKeys.agreement, selfID: bob, peerID: alice)
        #expect(ab != nil)
        #expect(ab == ba)
        let ac = SessionCrypto.pairKey(privateKey: a.agreement, peerPublicKey: c.publicKeys.agreement, selfID: alice, peerID: carol)
        #expect(ac != ab)
        // Bound to the IDs: the same keys under other names give another key.
        let renamed = SessionCrypto.pairKey(privateKey: a.agreement, peerPublicKey: b.publicKeys.agreement, selfID: alice, peerID: carol)
        #expect(renamed != ab)
        #expect(SessionCrypto.pairKey(privateKey: a.agreement, peerPublicKey: [], selfID: alice, peerID: bob) == nil)
    }

    @Test func sealAndOpen() {
        let text = "héllo, bob 👋"
        guard let sealed = SessionCrypto.seal(text, from: alice, to: bob, messageID: 77, key: key) else {
            Issue.record("seal failed"); return
        }
        #expect(sealed.count == text.utf8.count + 16)
        #expect(!sealed.starts(with: Array(text.utf8.prefix(4))))
        #expect(SessionCrypto.open(sealed, from: alice, to: bob, messageID: 77, key: key) == text)
        #expect(SessionCrypto.open(sealed, from: alice, to: bob, messageID: 77, key: otherKey) == nil)
        #expect(SessionCrypto.open(sealed, from: bob, to: alice, messageID: 77, key: key) == nil)
        #expect(SessionCrypto.open(sealed, from: alice, to: carol, messageID: 77, key: key) == nil)
        #expect(SessionCrypto.open(sealed, from: alice, to: bob, messageID: 78, key: key) == nil)
        for index in sealed.indices {
            var altered = sealed
            altered[index] ^= 0x01
            #expect(SessionCrypto.open(altered, from: alice, to: bob, messageID: 77, key: key) == nil, "byte \(index)")
        }
        #expect(SessionCrypto.open(Array(sealed.dropLast()), from: alice, to: bob, messageID: 77, key: key) == nil)
        #expect(SessionCrypto.open(Array(sealed.prefix(15)), from: alice, to: bob, messageID: 77, key: key) == nil)
        #expect(SessionCrypto.open([], from: alice, to: bob, messageID: 77, key: key) == nil)
    }

    @Test func emptyTextAndDirections() {
        let empty = SessionCrypto.seal("", from: alice, to: bob, messageID: 1, key: key)
        #expect(empty?.count == 16)
        #expect(empty.flatMap { SessionCrypto.open($0, from: alice, to: bob, messageID: 1, key: key) } == "")
        // The same message ID in both directions uses two nonces: different ciphertexts.
        let there = SessionCrypto.seal("same", from: alice, to: bob, messageID: 5, key: key)
        let back = SessionCrypto.seal("same", from: bob, to: alice, messageID: 5, key: key)
        #expect(there != nil && back != nil)
        #expect(there != back)
        #expect(there.map { Array($0.prefix(4)) } != back.map { Array($0.prefix(4)) })
    }
}
