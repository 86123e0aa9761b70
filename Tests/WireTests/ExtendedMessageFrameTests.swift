import Testing
import Wire

@Suite struct KeepAliveFrameTests {
    @Test func readsTheFieldsDecodeReads() throws {
        for idText in ["a", "alice", String(repeating: "z", count: ClientID.maxUTF8Length), "동현"] {
            let id = try ClientID(idText)
            let message = ExtendedMessage.keepAlive(id: id, natKind: .endpointDependent, counter: 0x0102_0304_0506_0708,
                                                    tag: Token128(high: 0xAA, low: 0xBB))
            let bytes = message.encode()
            #expect(try ExtendedMessage.decode(bytes) == message)
            bytes.withUnsafeBytes { raw in
                guard let frame = ExtendedMessage.KeepAliveFrame(raw) else { Issue.record("no frame for \(idText)"); return }
                #expect(Array(frame.idBytes) == Array(idText.utf8))
                #expect(frame.natKind == .endpointDependent)
                #expect(frame.counter == 0x0102_0304_0506_0708)
                #expect(frame.tag == Token128(high: 0xAA, low: 0xBB))
                #expect(Array(frame.authenticated) == Array(bytes.dropLast(16)))
            }
        }
    }

    @Test func refusesEverythingThatIsNotOneWholeKeepAlive() throws {
        let good = ExtendedMessage.keepAlive(id: try ClientID("alice"), natKind: .none, counter: 1, tag: .zero).encode()
        var variants: [[UInt8]] = [[], Array(good.prefix(3)), Array(good.dropLast()), good + [0]]
        for (index, value) in [(0, UInt8(0xFD)), (1, 2), (2, 0x03), (3, 0), (3, 6), (3, 200), (9, 99)] {
            var bad = good
            bad[index] = value
            variants.append(bad)
        }
        variants.append(ExtendedMessage.keepAliveAck(publicEndpoint: Endpoint(address: IPv4Address(bits: 1), port: 2)).encode())
        for bytes in variants {
            #expect(bytes.withUnsafeBytes { ExtendedMessage.KeepAliveFrame($0) } == nil, "\(bytes)")
        }
    }

    @Test func theAcknowledgementConstantsMatchTheEncoder() {
        let ack = ExtendedMessage.keepAliveAck(publicEndpoint: Endpoint(address: IPv4Address(bits: 0xCB00_7107), port: 40001)).encode()
        #expect(ack.count == ExtendedMessage.keepAliveAckLength)
        #expect(ack[2] == ExtendedMessage.keepAliveAckKind)
    }
}
