import Addressing
import MonotonicTime
import PortMapping
import TestSupport
import Testing

private func ms(_ milliseconds: Int64) -> Instant { Instant.zero + .milliseconds(milliseconds) }
private func seconds(_ value: Int64) -> Instant { Instant.zero + .seconds(value) }

private let gateway = IPv4Address(192, 168, 1, 1)
private let server = Endpoint(address: gateway, port: 5351)
private let client = IPv4Address(192, 168, 1, 2)
private let publicIP = IPv4Address(203, 0, 113, 101)

private func hex(_ text: String) -> [UInt8] {
    let digits = Array(text.filter { !$0.isWhitespace })
    return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16) ?? 0 }
}

private func makeClient(protocols: Set<MappingProtocol> = [.pcp, .natpmp], lifetime: UInt32 = 7200) -> PortMappingClient {
    var random = SplitMix64(state: 7)
    var configuration = PortMappingClient.Configuration(gateway: gateway, clientAddress: client, internalPort: 10081)
    configuration.protocols = protocols
    configuration.lifetime = lifetime
    return PortMappingClient(configuration: configuration, random: &random)
}

/// The bytes of the only `.send` in `outputs` (and that it goes to the gateway).
private func sent(_ outputs: [PortMappingClient.Output]) -> [UInt8]? {
    let sends = outputs.compactMap { output -> [UInt8]? in
        if case .send(let bytes, let destination) = output, destination == server { return bytes }
        return nil
    }
    return sends.count == 1 ? sends[0] : nil
}

/// A PCP MAP success answering `request` (its nonce and internal port).
private func pcpAnswer(to request: [UInt8], port: UInt16, lifetime: UInt32 = 7200, epoch: UInt32 = 100,
                       result: PCP.ResultCode = .success) -> [UInt8] {
    PCP.MapResponse(header: .init(opcode: PCP.opcodeMap, result: result, lifetime: lifetime, epoch: epoch),
                    nonce: PCP.Nonce(bytes: Array(request[24..<36])), protocolNumber: 17, internalPort: 10081,
                    assignedExternalPort: port, assignedExternalAddress: publicIP).encode()
}

@Suite struct PortMappingCodecTests {
    @Test func pcpMapRequestIsByteExact() {
        let request = PCP.MapRequest(nonce: PCP.Nonce(bytes: Array(1...12)), lifetime: 7200, clientAddress: client,
                                     internalPort: 10081, suggestedExternalPort: 10081)
        #expect(request.encode() == hex("""
            02 01 0000 00001c20 00000000000000000000ffff c0a80102
            0102030405060708090a0b0c 11 000000 2761 2761 00000000000000000000ffff 00000000
            """))
        #expect(request.encode().count == 60)
    }

    @Test func pcpAnnounceIsTheHeaderAlone() {
        #expect(PCP.announceRequest(clientAddress: client) == hex("02 00 0000 00000000 00000000000000000000ffff c0a80102"))
    }

    @Test func natpmpRequestsAreByteExact() {
        #expect(NATPMP.externalAddressRequest() == [0, 0])
        #expect(NATPMP.mapRequest(internalPort: 10081, suggestedExternalPort: 10081, lifetime: 7200) == hex("00 01 0000 2761 2761 00001c20"))
        #expect(NATPMP.mapRequest(internalPort: 10081, suggestedExternalPort: 0, lifetime: 0) == hex("00 01 0000 2761 0000 00000000"))
    }

    @Test func pcpMapResponseDecodes() throws {
        let bytes = hex("""
            02 81 00 00 00001c20 0000002a 000000000000000000000000
            0102030405060708090a0b0c 11 000000 2761 9c41 00000000000000000000ffff cb007165
            """)
        guard case .map(let map) = try PCP.decodeResponse(bytes) else { Issue.record("not a MAP response"); return }
        #expect(map.header == PCP.ResponseHeader(opcode: 1, result: .success, lifetime: 7200, epoch: 42))
        #expect(map.nonce == PCP.Nonce(bytes: Array(1...12)))
        #expect(map.internalPort == 10081)
        #expect(map.assignedExternalPort == 40001)
        #expect(map.assignedExternalAddress == publicIP)
        #expect(map.encode() == bytes)
    }

    @Test func natpmpResponsesDecode() throws {
        #expect(try NATPMP.decodeResponse(hex("00 80 0000 00000010 cb007165")) == .externalAddress(result: 0, epoch: 16, address: publicIP))
        #expect(try NATPMP.decodeResponse(hex("00 81 0000 00000010 2761 2761 00001c20"))
                == .mapUDP(result: 0, epoch: 16, internalPort: 10081, externalPort: 10081, lifetime: 7200))
        #expect(try NATPMP.decodeResponse(hex("00 82 0001 00000000")) == .other(opcode: 130, result: 1))
    }

    @Test func badInputIsATypedError() {
        #expect(throws: PortMappingDecodeError.truncated(needed: 8, got: 4)) { try PCP.decodeResponse(hex("02 81 00 00")) }
        #expect(throws: PortMappingDecodeError.unexpectedVersion(0)) { try PCP.decodeResponse(hex("00 80 0000")) }
        #expect(throws: PortMappingDecodeError.unexpectedOpcode(1)) { try PCP.decodeResponse(hex("02 01 0000")) }
        #expect(throws: PortMappingDecodeError.unexpectedVersion(2)) { try NATPMP.decodeResponse(hex("02 81")) }
        #expect(throws: PortMappingDecodeError.truncated(needed: 12, got: 10)) { try NATPMP.decodeResponse(hex("00 80 0000 00000010 cb00")) }
        #expect(throws: PortMappingDecodeError.self) { try NATPMP.decodeResponse([]) }
        var notMapped = pcpAnswer(to: PCP.MapRequest(nonce: PCP.Nonce(bytes: []), lifetime: 1, clientAddress: client, internalPort: 1,
                                                     suggestedExternalPort: 1).encode(), port: 1)
        notMapped[54] = 0
        #expect(throws: PortMappingDecodeError.notIPv4Mapped) { try PCP.decodeResponse(notMapped) }
    }

    @Test func randomBytesNeverTrap() {
        var random = SplitMix64(state: 1)
        for _ in 0..<5000 {
            let count = Int.random(in: 0...80, using: &random)
            var bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &random) }
            if !bytes.isEmpty { bytes[0] = [0, 2, 1][Int.random(in: 0...2, using: &random)] }
            if bytes.count > 1, Bool.random(using: &random) { bytes[1] = 0x81 }
            _ = try? PCP.decodeResponse(bytes)
            _ = try? NATPMP.decodeResponse(bytes)
            var mappingClient = makeClient()
            _ = mappingClient.start(now: .zero)
            _ = mappingClient.handleReceive(bytes, from: server, now: ms(1))
        }
    }
}

@Suite struct PortMappingClientTests {
    @Test func pcpGrantsRenewsAndDeletes() throws {
        var mapper = makeClient()
        let first = try #require(sent(mapper.start(now: .zero)))
        #expect(first.count == 60 && first[0] == 2 && first[1] == 1)
        #expect(Array(first[42..<44]) == [0x27, 0x61])   // suggested external port = internal port
        #expect(mapper.nextDeadline == ms(250))
        let granted = Mapping(via: .pcp, internalPort: 10081, external: Endpoint(address: publicIP, port: 10081), lifetimeSeconds: 7200)
        #expect(mapper.handleReceive(pcpAnswer(to: first, port: 10081), from: server, now: ms(5)) == [.mapped(granted)])
        #expect(mapper.mapping == granted)
        // Renewal: half of 7200 s capped at 120 s.
        #expect(mapper.nextDeadline == ms(5) + .seconds(120))
        #expect(mapper.handleTimeout(now: seconds(100)).isEmpty)
        let renewal = try #require(sent(mapper.handleTimeout(now: ms(120_005))))
        #expect(Array(renewal[24..<36]) == Array(first[24..<36]))   // the same nonce
        #expect(mapper.handleReceive(pcpAnswer(to: renewal, port: 10081, epoch: 220), from: server, now: ms(120_010)) == [.renewed(granted)])
        let deletion = try #require(sent(mapper.close(now: seconds(130))))
        #expect(Array(deletion[4..<8]) == [0, 0, 0, 0])                 // lifetime 0
        #expect(Array(deletion[24..<36]) == Array(first[24..<36]))
        #expect(mapper.handleReceive(pcpAnswer(to: deletion, port: 10081, lifetime: 0, epoch: 230), from: server,
                                     now: seconds(130)) == [.closed(deleted: true)])
        #expect(mapper.nextDeadline == nil)
    }

    @Test func renewsAtHalfTheLifetimeWhenShorter() throws {
        var mapper = makeClient(lifetime: 60)
        let first = try #require(sent(mapper.start(now: .zero)))
        _ = mapper.handleReceive(pcpAnswer(to: first, port: 10081, lifetime: 60), from: server, now: .zero)
        #expect(mapper.nextDeadline == seconds(30))
    }

    @Test func answersFromElsewhereOrForAnotherNonceAreIgnored() throws {
        var mapper = makeClient()
        let first = try #require(sent(mapper.start(now: .zero)))
        let answer = pcpAnswer(to: first, port: 10081)
        #expect(mapper.handleReceive(answer, from: Endpoint(address: gateway, port: 5350), now: ms(1)).isEmpty)
        #expect(mapper.handleReceive(answer, from: Endpoint(address: IPv4Address(192, 168, 1, 9), port: 5351), now: ms(1)).isEmpty)
        var otherNonce = answer
        otherNonce[24] ^= 0xFF
        #expect(mapper.handleReceive(otherNonce, from: server, now: ms(1)).isEmpty)
        #expect(mapper.mapping == nil)
    }

    @Test func silenceFallsBackToNATPMPAfterThreeSendings() throws {
        var mapper = makeClient()
        #expect(sent(mapper.start(now: .zero))?.count == 60)
        #expect(mapper.handleTimeout(now: ms(249)).isEmpty)
        #expect(sent(mapper.handleTimeout(now: ms(250)))?.count == 60)
        #expect(mapper.nextDeadline == ms(750))
        #expect(sent(mapper.handleTimeout(now: ms(750)))?.count == 60)
        #expect(mapper.nextDeadline == ms(1750))
        #expect(sent(mapper.handleTimeout(now: ms(1750))) == [0, 0])
        let mapRequest = mapper.handleReceive(NATPMP.Response.externalAddress(result: 0, epoch: 50, address: publicIP).encode(),
                                              from: server, now: ms(1760))
        #expect(sent(mapRequest) == NATPMP.mapRequest(internalPort: 10081, suggestedExternalPort: 10081, lifetime: 7200))
        let answer = NATPMP.Response.mapUDP(result: 0, epoch: 50, internalPort: 10081, externalPort: 10081, lifetime: 3600).encode()
        let granted = Mapping(via: .natpmp, internalPort: 10081, external: Endpoint(address: publicIP, port: 10081), lifetimeSeconds: 3600)
        #expect(mapper.handleReceive(answer, from: server, now: ms(1770)) == [.mapped(granted)])
        // Delete: lifetime 0 and suggested port 0 (RFC 6886 §3.4).
        #expect(sent(mapper.close(now: seconds(5))) == hex("00 01 0000 2761 0000 00000000"))
    }

    @Test func aNATPMPServerAnsweringUnsupportedVersionFallsBackAtOnce() throws {
        var mapper = makeClient()
        _ = mapper.start(now: .zero)
        let unsupported = NATPMP.Response.other(opcode: 129, result: 1).encode()
        #expect(sent(mapper.handleReceive(unsupported, from: server, now: ms(3))) == [0, 0])
    }

    @Test func pcpUnsupportedVersionHeaderFallsBack() throws {
        var mapper = makeClient()
        _ = mapper.start(now: .zero)
        let header = hex("02 81 00 01 00000000 00000005 000000000000000000000000")
        #expect(sent(mapper.handleReceive(header, from: server, now: ms(3))) == [0, 0])
    }

    @Test func noProtocolAnsweringIsReported() {
        var mapper = makeClient()
        _ = mapper.start(now: .zero)
        var last: [PortMappingClient.Output] = []
        var now = Instant.zero
        for _ in 0..<20 {
            guard let deadline = mapper.nextDeadline else { break }
            now = deadline
            last = mapper.handleTimeout(now: now)
        }
        guard case .unavailable(let report)? = last.last else { Issue.record("expected unavailable, got \(last)"); return }
        #expect("\(report)" == "PCP no answer, NAT-PMP no answer")
        #expect(now == ms(3500))
        #expect(mapper.nextDeadline == nil)
    }

    @Test func aPCPRefusalFallsBackAndIsReported() throws {
        var mapper = makeClient()
        let first = try #require(sent(mapper.start(now: .zero)))
        #expect(sent(mapper.handleReceive(pcpAnswer(to: first, port: 0, lifetime: 0, result: .notAuthorized), from: server,
                                          now: ms(2))) == [0, 0])
        let refused = NATPMP.Response.other(opcode: 128, result: 2).encode()
        guard case .unavailable(let report)? = mapper.handleReceive(refused, from: server, now: ms(3)).last else {
            Issue.record("expected unavailable"); return
        }
        #expect("\(report)" == "PCP refused (NOT_AUTHORIZED), NAT-PMP refused (result 2)")
    }

    @Test func anEpochGoingBackwardsIsAGatewayRestart() throws {
        var mapper = makeClient()
        let first = try #require(sent(mapper.start(now: .zero)))
        _ = mapper.handleReceive(pcpAnswer(to: first, port: 10081, epoch: 1000), from: server, now: .zero)
        let renewal = try #require(sent(mapper.handleTimeout(now: seconds(120))))
        // The gateway rebooted 3 s ago: same port, but the mapping was made again.
        let outputs = mapper.handleReceive(pcpAnswer(to: renewal, port: 10081, epoch: 3), from: server, now: seconds(120))
        guard case .mapped? = outputs.first else { Issue.record("expected mapped, got \(outputs)"); return }
        // An epoch that moved with the clock is no restart.
        let again = try #require(sent(mapper.handleTimeout(now: seconds(240))))
        guard case .renewed? = mapper.handleReceive(pcpAnswer(to: again, port: 10081, epoch: 123), from: server, now: seconds(240)).first
        else { Issue.record("expected renewed"); return }
    }

    @Test func aNATPMPEpochResetOnTheAddressAnswerRemaps() throws {
        var mapper = makeClient(protocols: [.natpmp])
        #expect(sent(mapper.start(now: .zero)) == [0, 0])
        _ = mapper.handleReceive(NATPMP.Response.externalAddress(result: 0, epoch: 500, address: publicIP).encode(), from: server, now: .zero)
        let answer = NATPMP.Response.mapUDP(result: 0, epoch: 500, internalPort: 10081, externalPort: 10081, lifetime: 7200)
        guard case .mapped? = mapper.handleReceive(answer.encode(), from: server, now: .zero).first else { Issue.record("no grant"); return }
        #expect(sent(mapper.handleTimeout(now: seconds(120))) == [0, 0])
        _ = mapper.handleReceive(NATPMP.Response.externalAddress(result: 0, epoch: 2, address: publicIP).encode(), from: server, now: seconds(120))
        let renewed = NATPMP.Response.mapUDP(result: 0, epoch: 2, internalPort: 10081, externalPort: 10081, lifetime: 7200)
        guard case .mapped? = mapper.handleReceive(renewed.encode(), from: server, now: seconds(120)).first else {
            Issue.record("a restart must show as mapped"); return
        }
    }

    @Test func unansweredRenewalsRetryThenTheMappingIsLost() throws {
        var mapper = makeClient(lifetime: 20)
        let first = try #require(sent(mapper.start(now: .zero)))
        _ = mapper.handleReceive(pcpAnswer(to: first, port: 10081, lifetime: 20), from: server, now: .zero)
        var lost = false
        var now = Instant.zero
        for _ in 0..<40 {
            guard let deadline = mapper.nextDeadline, deadline <= seconds(30) else { break }
            now = deadline
            if mapper.handleTimeout(now: now).contains(where: { if case .lost = $0 { return true } else { return false } }) {
                lost = true
                break
            }
        }
        #expect(lost)
        #expect(now >= seconds(20) && now < seconds(21))
        // It starts over with PCP at once.
        #expect(mapper.nextDeadline == now + .milliseconds(250))
    }

    @Test func closingWithoutAMappingIsImmediate() {
        var mapper = makeClient()
        #expect(mapper.close(now: .zero) == [.closed(deleted: false)])
        #expect(mapper.start(now: .zero).isEmpty)
    }

    @Test func anUnansweredDeletionEndsAfterTwoSendings() throws {
        var mapper = makeClient()
        let first = try #require(sent(mapper.start(now: .zero)))
        _ = mapper.handleReceive(pcpAnswer(to: first, port: 10081), from: server, now: .zero)
        #expect(sent(mapper.close(now: seconds(1))) != nil)
        #expect(sent(mapper.handleTimeout(now: seconds(1) + .milliseconds(250))) != nil)
        #expect(mapper.handleTimeout(now: seconds(1) + .milliseconds(750)) == [.closed(deleted: false)])
    }
}

@Suite struct PortMappingProbeTests {
    @Test func reportsBothWhenBothAnswer() {
        var probe = PortMappingProbe(gateway: gateway, clientAddress: client)
        let first = probe.start(now: .zero)
        #expect(first == [.send(PCP.announceRequest(clientAddress: client), to: server), .send([0, 0], to: server)])
        #expect(probe.handleReceive(hex("02 80 00 00 00000000 00000005 000000000000000000000000"), from: server, now: ms(1)).isEmpty)
        #expect(probe.handleReceive(NATPMP.Response.externalAddress(result: 0, epoch: 5, address: publicIP).encode(), from: server,
                                    now: ms(2)) == [.settled([.pcp, .natpmp])])
    }

    @Test func aNATPMPOnlyGatewayIsNotPCP() {
        var probe = PortMappingProbe(gateway: gateway, clientAddress: client)
        _ = probe.start(now: .zero)
        #expect(probe.handleReceive(NATPMP.Response.other(opcode: 128, result: 1).encode(), from: server, now: ms(1)).isEmpty)
        #expect(probe.handleReceive(NATPMP.Response.externalAddress(result: 0, epoch: 5, address: publicIP).encode(), from: server,
                                    now: ms(2)) == [.settled([.natpmp])])
    }

    @Test func silenceSettlesEmptyAfterTheSchedule() {
        var probe = PortMappingProbe(gateway: gateway, clientAddress: client)
        #expect(probe.start(now: .zero).count == 2)
        #expect(probe.handleTimeout(now: ms(250)).count == 2)
        #expect(probe.handleTimeout(now: ms(750)).count == 2)
        #expect(probe.handleTimeout(now: ms(1749)).isEmpty)
        #expect(probe.handleTimeout(now: ms(1750)) == [.settled([])])
        #expect(probe.nextDeadline == nil)
    }
}

@Suite struct DefaultRouteTests {
    @Test func findsTheDefaultGateway() {
        let table = """
            Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
            eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
            eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
            """
        #expect(DefaultRoute.gateway(procNetRoute: table) == IPv4Address(192, 168, 1, 1))
    }

    @Test func noDefaultRouteOrGarbageIsNil() {
        #expect(DefaultRoute.gateway(procNetRoute: "Iface\tDestination\n eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF") == nil)
        #expect(DefaultRoute.gateway(procNetRoute: "") == nil)
        #expect(DefaultRoute.gateway(procNetRoute: "header\nzz 00000000 XYZ 0003 0 0 0 00000000") == nil)
        // A default route without a gateway (a point-to-point link) is not one.
        #expect(DefaultRoute.gateway(procNetRoute: "h\nppp0 00000000 00000000 0001 0 0 0 00000000") == nil)
    }
}
