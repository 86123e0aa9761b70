import Addressing
import Testing
import Wire

@Suite struct KeepAliveFrameTests {
    @Test func readsTheFieldsDecodeReads() throws {
        for idText in ["a", "alice", String(repeating: "z", count: ClientID.maxUTF8Length), "동현"] {
            let id = try ClientID(idText)
            let datagram = ExtendedDatagram(.keepAlive(id: id, natKind: .endpointDependent),
                                            trailer: .session(counter: 0x0102_0304_0506_0708, tag: Token128(high: 0xAA, low: 0xBB)))
            let bytes = datagram.encode()
            #expect(try ExtendedDatagram.decode(bytes) == datagram)
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
        let good = ExtendedDatagram(.keepAlive(id: try ClientID("alice"), natKind: .none), trailer: .session(counter: 1, tag: .zero)).encode()
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

    @Test func theInPlaceAcknowledgementWriterMatchesTheEncoder() {
        for endpoint in [Endpoint(address: IPv4Address(bits: 0xCB00_7107), port: 40001), Endpoint(address: IPv4Address(bits: 0), port: 0),
                         Endpoint(address: IPv4Address(bits: .max), port: .max)] {
            var bytes = [UInt8](repeating: 0xEE, count: ExtendedMessage.keepAliveAckLength + 2)
            let written = bytes.withUnsafeMutableBytes { ExtendedMessage.writeKeepAliveAck(publicEndpoint: endpoint, into: $0) }
            #expect(written == ExtendedMessage.keepAliveAckLength)
            #expect(Array(bytes.prefix(written)) == ExtendedMessage.keepAliveAck(publicEndpoint: endpoint).encode())
            #expect(bytes.suffix(2) == [0xEE, 0xEE])
        }
        var short = [UInt8](repeating: 0xEE, count: ExtendedMessage.keepAliveAckLength - 1)
        #expect(short.withUnsafeMutableBytes { ExtendedMessage.writeKeepAliveAck(publicEndpoint: Endpoint(address: IPv4Address(bits: 1), port: 2), into: $0) } == 0)
        #expect(short.allSatisfy { $0 == 0xEE })
    }
}

@Suite struct RelayFrameTests {
    @Test func readsTheFieldsDecodeReadsAndWritesTheRelayedDatagram() throws {
        for (from, to, payload) in [("a", "b", [UInt8]()), ("alice", "carol", Array("hello".utf8)),
                                    ("동현", String(repeating: "z", count: ClientID.maxUTF8Length),
                                     Array(repeating: 0xAB, count: ExtendedMessage.maxRelayPayload))] {
            let datagram = ExtendedDatagram(.relay(id: try ClientID(from), to: try ClientID(to), payload: payload),
                                            trailer: .session(counter: 77, tag: Token128(high: 1, low: 2)))
            let bytes = datagram.encode()
            #expect(try ExtendedDatagram.decode(bytes) == datagram)
            bytes.withUnsafeBytes { raw in
                guard let frame = ExtendedMessage.RelayFrame(raw) else { Issue.record("no frame for \(from)"); return }
                #expect(Array(frame.idBytes) == Array(from.utf8))
                #expect(Array(frame.toBytes) == Array(to.utf8))
                #expect(Array(frame.payload) == payload)
                #expect(frame.counter == 77)
                #expect(frame.tag == Token128(high: 1, low: 2))
                #expect(Array(frame.authenticated) == Array(bytes.dropLast(16)))
                var written: [UInt8] = []
                written = [UInt8](unsafeUninitializedCapacity: frame.relayedLength) { buffer, count in
                    count = frame.writeRelayed(into: UnsafeMutableRawBufferPointer(buffer))
                }
                let relayed = ExtendedMessage.relayed(from: try! ClientID(from), payload: payload).encode()
                #expect(written == relayed)
                #expect(frame.relayedLength == relayed.count)
                var short = [UInt8](repeating: 0xEE, count: relayed.count - 1)
                #expect(short.withUnsafeMutableBytes { frame.writeRelayed(into: $0) } == 0)
                #expect(short.allSatisfy { $0 == 0xEE })
            }
        }
    }

    @Test func refusesWhatDecodeRefuses() throws {
        let good = ExtendedDatagram(.relay(id: try ClientID("alice"), to: try ClientID("bob"), payload: [1, 2, 3]),
                                    trailer: .session(counter: 1, tag: .zero)).encode()
        var variants: [[UInt8]] = [[], Array(good.prefix(5)), Array(good.dropLast()), good + [0]]
        // Bad kind, zero-length IDs, a payload length past the end.
        for (index, value) in [(2, UInt8(0x02)), (3, 0), (9, 0), (13, 9)] {
            var bad = good
            bad[index] = value
            variants.append(bad)
        }
        let tooLong = ExtendedDatagram(.relay(id: try ClientID("a"), to: try ClientID("b"),
                                              payload: Array(repeating: 0, count: ExtendedMessage.maxRelayPayload + 1)),
                                       trailer: .session(counter: 1, tag: .zero)).encode()
        variants.append(tooLong)
        for bytes in variants {
            #expect((try? ExtendedMessage.decode(bytes)) == nil || bytes == good)
            #expect(bytes.withUnsafeBytes { ExtendedMessage.RelayFrame($0) } == nil, "\(bytes.prefix(16))")
        }
    }
}
