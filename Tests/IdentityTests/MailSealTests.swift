import Addressing
import Crypto
import Identity
import Testing
import Wire

@Suite("MailSeal")
struct MailSealTests {
    let alice = try! ClientID("alice"), bob = try! ClientID("bob"), mallory = try! ClientID("mallory")
    let aliceKey = IdentityKey(), bobKey = IdentityKey(), malloryKey = IdentityKey()

    @Test func theRecipientOpensWhatTheSenderSealed() throws {
        let sealed = try MailSeal.seal("hello bob, 안녕", sentAt: 1_764_900_000, from: alice, identity: aliceKey, to: bob,
                                       keys: bobKey.publicKeys)
        #expect(sealed.count == MailSeal.overhead + "hello bob, 안녕".utf8.count)
        let opened = try MailSeal.open(sealed, identity: bobKey, recipientID: bob, from: alice)
        #expect(opened == MailSeal.Contents(text: "hello bob, 안녕", sentAt: 1_764_900_000,
                                            senderSigningKey: aliceKey.publicKeys.signing))
        // The longest chat fits a mailbox datagram.
        let longest = try MailSeal.seal(String(repeating: "x", count: ExtendedMessage.maxTextBytes), sentAt: 0, from: alice,
                                        identity: aliceKey, to: bob, keys: bobKey.publicKeys)
        #expect(longest.count <= ExtendedMessage.maxMailBytes)
    }

    @Test func theTextIsNotInTheSealedBytes() throws {
        let text = "a secret only bob may read"
        let sealed = try MailSeal.seal(text, sentAt: 0, from: alice, identity: aliceKey, to: bob, keys: bobKey.publicKeys)
        let needle = Array(text.utf8)
        #expect(!(0...(sealed.count - needle.count)).contains { Array(sealed[$0..<($0 + needle.count)]) == needle })
    }

    /// Anyone else (the server included) cannot open it, and nothing can be changed or
    /// passed off as from someone else or to someone else.
    @Test func othersCannotOpenForgeOrRedirectIt() throws {
        let sealed = try MailSeal.seal("hi", sentAt: 5, from: alice, identity: aliceKey, to: bob, keys: bobKey.publicKeys)
        #expect(throws: MailSeal.OpenError.cannotDecrypt) { try MailSeal.open(sealed, identity: malloryKey, recipientID: bob, from: alice) }
        #expect(throws: MailSeal.OpenError.badSignature) { try MailSeal.open(sealed, identity: bobKey, recipientID: bob, from: mallory) }
        #expect(throws: MailSeal.OpenError.badSignature) { try MailSeal.open(sealed, identity: bobKey, recipientID: mallory, from: alice) }
        for index in [0, 1, 40, 70, sealed.count - 70, sealed.count - 1] {
            var tampered = sealed
            tampered[index] ^= 0x01
            #expect(throws: (any Error).self) { try MailSeal.open(tampered, identity: bobKey, recipientID: bob, from: alice) }
        }
        #expect(throws: MailSeal.OpenError.malformed) { try MailSeal.open(Array(sealed.prefix(100)), identity: bobKey, recipientID: bob, from: alice) }
        // mallory re-signs alice's box with her own key: it opens, and says so (the signing
        // key is mallory's, which the recipient compares with alice's known key).
        let forged = try MailSeal.seal("hi", sentAt: 5, from: alice, identity: malloryKey, to: bob, keys: bobKey.publicKeys)
        #expect(try MailSeal.open(forged, identity: bobKey, recipientID: bob, from: alice).senderSigningKey == malloryKey.publicKeys.signing)
    }
}
