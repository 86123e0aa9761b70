import Addressing
import Crypto
import Foundation
import Wire

/// A mailbox message, sealed end to end: what a client hands the server for an offline peer.
///
/// The server stores and forwards it and can neither read nor forge it:
/// - **Secret**: an ephemeral X25519 key agreed with the recipient's long-term agreement key
///   (the key of its claim), HKDF-SHA256 bound to both IDs, ChaCha20-Poly1305 over the text
///   and the time it was written. Only the holder of the recipient's private key opens it.
/// - **Authentic**: signed (Ed25519) by the sender's long-term key over both IDs and every
///   byte before the signature, the sender's public signing key included; the recipient
///   checks the signature, and then whether that key is the sender's (its pin in known peers,
///   or the sender's claim).
///
/// Layout: version (1) · sender's signing key (32) · ephemeral key (32) · nonce, ciphertext
/// and tag (12 + 8 + text + 16) · signature (64): 165 bytes and the text's UTF-8.
public enum MailSeal {
    static let version: UInt8 = 1
    static let context = Array("natchat mail v1".utf8)
    /// Bytes a sealed message adds to its text.
    public static let overhead = 1 + 32 + 32 + 12 + 8 + 16 + 64

    /// What a recipient reads out of a sealed message.
    public struct Contents: Hashable, Sendable {
        public var text: String
        /// When the sender wrote it (Unix seconds, the sender's clock).
        public var sentAt: UInt64
        /// The Ed25519 key that signed it: compare it with the sender's known key.
        public var senderSigningKey: [UInt8]

        public init(text: String, sentAt: UInt64, senderSigningKey: [UInt8]) {
            self.text = text
            self.sentAt = sentAt
            self.senderSigningKey = senderSigningKey
        }
    }

    /// Why a sealed message could not be opened.
    public enum OpenError: Error, Hashable, Sendable {
        case malformed
        case badSignature
        case cannotDecrypt
    }

    /// Seals `text` from `sender` (ID and long-term key) to `recipient` (ID and its claim's keys).
    public static func seal(_ text: String, sentAt: UInt64, from senderID: ClientID, identity: IdentityKey,
                            to recipientID: ClientID, keys recipientKeys: PublicKeys) throws -> [UInt8] {
        let recipientAgreement = try Curve25519.KeyAgreement.PublicKey(rawRepresentation: recipientKeys.agreement)
        let ephemeral = Curve25519.KeyAgreement.PrivateKey()
        let ephemeralPublic = Array(ephemeral.publicKey.rawRepresentation)
        let key = try symmetricKey(shared: ephemeral.sharedSecretFromKeyAgreement(with: recipientAgreement),
                                   ephemeral: ephemeralPublic, recipientAgreement: recipientKeys.agreement,
                                   senderID: senderID, recipientID: recipientID)
        var plaintext = WireWriter(capacity: 8 + text.utf8.count)
        plaintext.u64(sentAt)
        plaintext.raw(Array(text.utf8))
        let box = try ChaChaPoly.seal(plaintext.bytes, using: key)
        var body: [UInt8] = [version]
        body += identity.publicKeys.signing
        body += ephemeralPublic
        body += Array(box.combined)
        let signature = try identity.signing.signature(for: signedBytes(body, senderID: senderID, recipientID: recipientID))
        return body + Array(signature)
    }

    /// Opens a message sealed to `identity` (the recipient, `recipientID`) by `senderID`:
    /// checks its signature (against the signing key it carries) and decrypts it.
    public static func open(_ sealed: [UInt8], identity: IdentityKey, recipientID: ClientID,
                            from senderID: ClientID) throws(OpenError) -> Contents {
        guard sealed.count >= overhead, sealed.first == version else { throw .malformed }
        let body = Array(sealed.dropLast(64))
        let signature = Array(sealed.suffix(64))
        let signingKey = Array(body[1..<33])
        let ephemeralPublic = Array(body[33..<65])
        guard let verifier = try? Curve25519.Signing.PublicKey(rawRepresentation: signingKey),
              verifier.isValidSignature(signature, for: signedBytes(body, senderID: senderID, recipientID: recipientID))
        else { throw .badSignature }
        do {
            let ephemeral = try Curve25519.KeyAgreement.PublicKey(rawRepresentation: ephemeralPublic)
            let key = try symmetricKey(shared: identity.agreement.sharedSecretFromKeyAgreement(with: ephemeral),
                                       ephemeral: ephemeralPublic, recipientAgreement: identity.publicKeys.agreement,
                                       senderID: senderID, recipientID: recipientID)
            let plaintext = Array(try ChaChaPoly.open(ChaChaPoly.SealedBox(combined: body[65...]), using: key))
            guard plaintext.count >= 8 else { throw OpenError.malformed }
            let sentAt = plaintext[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            return Contents(text: String(decoding: plaintext[8...], as: UTF8.self), sentAt: sentAt, senderSigningKey: signingKey)
        } catch {
            throw .cannotDecrypt
        }
    }

    private static func symmetricKey(shared: SharedSecret, ephemeral: [UInt8], recipientAgreement: [UInt8],
                                     senderID: ClientID, recipientID: ClientID) throws -> SymmetricKey {
        shared.hkdfDerivedSymmetricKey(using: SHA256.self, salt: ephemeral + recipientAgreement,
                                       sharedInfo: context + ids(senderID, recipientID), outputByteCount: 32)
    }

    private static func signedBytes(_ body: [UInt8], senderID: ClientID, recipientID: ClientID) -> [UInt8] {
        context + ids(senderID, recipientID) + body
    }

    /// Both IDs, each with its length, so that no two pairs give the same bytes.
    private static func ids(_ a: ClientID, _ b: ClientID) -> [UInt8] {
        let first = Array(a.rawValue.utf8), second = Array(b.rawValue.utf8)
        return [UInt8(first.count)] + first + [UInt8(second.count)] + second
    }
}
