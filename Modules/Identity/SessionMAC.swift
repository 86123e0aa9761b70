import Wire

/// HMAC-SHA256 cut to 128 bits, with the key's two pad blocks hashed once when the key is
/// made (the "midstates"), so a tag costs two SHA-256 compressions and no allocation.
///
/// Why not swift-crypto's `HMAC<SHA256>` on this path: it allocates on every call (its digest
/// context is a class; the padded key is built in arrays) and rehashes both pad blocks, and
/// the server computes one tag per keep-alive and per relayed datagram. Every result is
/// checked against swift-crypto's HMAC in the tests (`SessionMACTests`), for many keys and
/// lengths; swift-crypto stays the reference and does everything else.
public struct SessionMAC: Hashable, Sendable {
    private let inner: SHA256State
    private let outer: SHA256State

    /// Prepares `key` (at most 64 bytes, as the session and pair keys are: 32).
    public init(key: UnsafeRawBufferPointer) {
        precondition(key.count <= 64, "HMAC keys longer than one block are hashed first; natchat keys are 32 bytes")
        var innerState = SHA256State.initial
        var outerState = SHA256State.initial
        withUnsafeTemporaryAllocation(byteCount: 64, alignment: 8) { block in
            for pad in [UInt8(0x36), 0x5C] {
                for index in 0..<64 { block[index] = (index < key.count ? key[index] : 0) ^ pad }
                if pad == 0x36 {
                    innerState.compress(UnsafeRawBufferPointer(block))
                } else {
                    outerState.compress(UnsafeRawBufferPointer(block))
                }
            }
            block.initializeMemory(as: UInt8.self, repeating: 0)
        }
        inner = innerState
        outer = outerState
    }

    /// The first 128 bits of HMAC-SHA256(key, `message`), most significant first.
    public func tag(_ message: UnsafeRawBufferPointer) -> Token128 {
        var state = inner
        state.absorbFinal(message, alreadyHashed: 64)
        var outerState = outer
        withUnsafeTemporaryAllocation(byteCount: 32, alignment: 8) { digest in
            state.write(to: digest)
            outerState.absorbFinal(UnsafeRawBufferPointer(digest), alreadyHashed: 64)
        }
        return Token128(high: UInt64(outerState.h0) << 32 | UInt64(outerState.h1),
                        low: UInt64(outerState.h2) << 32 | UInt64(outerState.h3))
    }

    /// Whether `tag` is the tag of `message` (compared in constant time).
    public func isValid(_ tag: Token128, for message: UnsafeRawBufferPointer) -> Bool {
        self.tag(message).constantTimeEquals(tag)
    }
}

/// The eight working words of SHA-256 (FIPS 180-4), compressed one 64-byte block at a time.
struct SHA256State: Hashable, Sendable {
    var h0, h1, h2, h3, h4, h5, h6, h7: UInt32

    static let initial = SHA256State(h0: 0x6A09_E667, h1: 0xBB67_AE85, h2: 0x3C6E_F372, h3: 0xA54F_F53A,
                                     h4: 0x510E_527F, h5: 0x9B05_688C, h6: 0x1F83_D9AB, h7: 0x5BE0_CD19)

    /// Hashes `message` to the end, with SHA-256's padding; `alreadyHashed` bytes went
    /// into this state before (a multiple of 64).
    mutating func absorbFinal(_ message: UnsafeRawBufferPointer, alreadyHashed: Int) {
        var offset = 0
        while message.count - offset >= 64 {
            compress(UnsafeRawBufferPointer(rebasing: message[offset..<(offset + 64)]))
            offset += 64
        }
        let tail = message.count - offset
        let bitLength = UInt64(alreadyHashed + message.count) &* 8
        withUnsafeTemporaryAllocation(byteCount: 128, alignment: 8) { block in
            block.initializeMemory(as: UInt8.self, repeating: 0)
            for index in 0..<tail { block[index] = message[offset + index] }
            block[tail] = 0x80
            let blocks = tail + 9 <= 64 ? 1 : 2
            let end = blocks * 64
            for index in 0..<8 { block[end - 1 - index] = UInt8(truncatingIfNeeded: bitLength >> (8 * UInt64(index))) }
            compress(UnsafeRawBufferPointer(rebasing: block[0..<64]))
            if blocks == 2 { compress(UnsafeRawBufferPointer(rebasing: block[64..<128])) }
        }
    }

    /// The digest, big-endian, into the first 32 bytes of `buffer`.
    func write(to buffer: UnsafeMutableRawBufferPointer) {
        buffer.storeBytes(of: h0.bigEndian, toByteOffset: 0, as: UInt32.self)
        buffer.storeBytes(of: h1.bigEndian, toByteOffset: 4, as: UInt32.self)
        buffer.storeBytes(of: h2.bigEndian, toByteOffset: 8, as: UInt32.self)
        buffer.storeBytes(of: h3.bigEndian, toByteOffset: 12, as: UInt32.self)
        buffer.storeBytes(of: h4.bigEndian, toByteOffset: 16, as: UInt32.self)
        buffer.storeBytes(of: h5.bigEndian, toByteOffset: 20, as: UInt32.self)
        buffer.storeBytes(of: h6.bigEndian, toByteOffset: 24, as: UInt32.self)
        buffer.storeBytes(of: h7.bigEndian, toByteOffset: 28, as: UInt32.self)
    }

    mutating func compress(_ block: UnsafeRawBufferPointer) {
        withUnsafeTemporaryAllocation(of: UInt32.self, capacity: 64) { w in
            for index in 0..<16 {
                w[index] = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: index * 4, as: UInt32.self))
            }
            for index in 16..<64 {
                let s0 = w[index - 15].rotatedRight(7) ^ w[index - 15].rotatedRight(18) ^ (w[index - 15] >> 3)
                let s1 = w[index - 2].rotatedRight(17) ^ w[index - 2].rotatedRight(19) ^ (w[index - 2] >> 10)
                w[index] = w[index - 16] &+ s0 &+ w[index - 7] &+ s1
            }
            var a = h0, b = h1, c = h2, d = h3, e = h4, f = h5, g = h6, h = h7
            SHA256State.roundConstants.withUnsafeBufferPointer { k in
                for index in 0..<64 {
                    let s1 = e.rotatedRight(6) ^ e.rotatedRight(11) ^ e.rotatedRight(25)
                    let choice = (e & f) ^ (~e & g)
                    let t1 = h &+ s1 &+ choice &+ k[index] &+ w[index]
                    let s0 = a.rotatedRight(2) ^ a.rotatedRight(13) ^ a.rotatedRight(22)
                    let majority = (a & b) ^ (a & c) ^ (b & c)
                    let t2 = s0 &+ majority
                    h = g; g = f; f = e; e = d &+ t1
                    d = c; c = b; b = a; a = t1 &+ t2
                }
            }
            h0 &+= a; h1 &+= b; h2 &+= c; h3 &+= d; h4 &+= e; h5 &+= f; h6 &+= g; h7 &+= h
        }
    }

    private static let roundConstants: [UInt32] = [
        0x428A_2F98, 0x7137_4491, 0xB5C0_FBCF, 0xE9B5_DBA5, 0x3956_C25B, 0x59F1_11F1, 0x923F_82A4, 0xAB1C_5ED5,
        0xD807_AA98, 0x1283_5B01, 0x2431_85BE, 0x550C_7DC3, 0x72BE_5D74, 0x80DE_B1FE, 0x9BDC_06A7, 0xC19B_F174,
        0xE49B_69C1, 0xEFBE_4786, 0x0FC1_9DC6, 0x240C_A1CC, 0x2DE9_2C6F, 0x4A74_84AA, 0x5CB0_A9DC, 0x76F9_88DA,
        0x983E_5152, 0xA831_C66D, 0xB003_27C8, 0xBF59_7FC7, 0xC6E0_0BF3, 0xD5A7_9147, 0x06CA_6351, 0x1429_2967,
        0x27B7_0A85, 0x2E1B_2138, 0x4D2C_6DFC, 0x5338_0D13, 0x650A_7354, 0x766A_0ABB, 0x81C2_C92E, 0x9272_2C85,
        0xA2BF_E8A1, 0xA81A_664B, 0xC24B_8B70, 0xC76C_51A3, 0xD192_E819, 0xD699_0624, 0xF40E_3585, 0x106A_A070,
        0x19A4_C116, 0x1E37_6C08, 0x2748_774C, 0x34B0_BCB5, 0x391C_0CB3, 0x4ED8_AA4A, 0x5B9C_CA4F, 0x682E_6FF3,
        0x748F_82EE, 0x78A5_636F, 0x84C8_7814, 0x8CC7_0208, 0x90BE_FFFA, 0xA450_6CEB, 0xBEF9_A3F7, 0xC671_78F2,
    ]
}

extension UInt32 {
    fileprivate func rotatedRight(_ count: UInt32) -> UInt32 { self >> count | self << (32 - count) }
}
