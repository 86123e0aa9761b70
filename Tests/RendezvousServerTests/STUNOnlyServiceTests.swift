import Addressing
import Testing
import MonotonicTime
import NIOCore
import RendezvousServer
import STUN
import Synchronization
import Transport

private func ep(_ text: String) -> Endpoint { try! Endpoint(parsing: text) }

/// The alternate port: plain Binding requests answered there; change-port ones from the main port.
struct STUNOnlyServiceTests {
    private let client = ep("203.0.113.7:40001")

    private func receive(_ service: STUNOnlyService, _ bytes: [UInt8]) -> [(Endpoint, [UInt8])] {
        var output = DatagramOutput()
        service.receive(ByteBuffer(bytes: bytes), from: client, now: .zero, output: &output)
        return output.pending.map { ($0.destination, Array($0.payload.readableBytesView)) }
    }

    @Test func plainRequestsAreAnsweredHere() throws {
        let service = STUNOnlyService()
        var random = SystemRandomNumberGenerator()
        let transaction = STUN.TransactionID.random(using: &random)
        let sent = receive(service, STUN.bindingRequest(transaction))
        #expect(sent.count == 1)
        #expect(sent.first?.0 == client)
        #expect(try STUN.decode(try #require(sent.first?.1)) == .bindingSuccess(transaction, mapped: client))
        #expect(service.answered == 1)
    }

    @Test func changePortIsAnsweredFromTheMainPortOnly() throws {
        let fromPrimary = Mutex<[([UInt8], Endpoint)]>([])
        let service = STUNOnlyService { bytes, destination in fromPrimary.withLock { $0.append((bytes, destination)) } }
        var random = SystemRandomNumberGenerator()
        let transaction = STUN.TransactionID.random(using: &random)
        #expect(receive(service, STUN.bindingRequest(transaction, change: .init(changePort: true))).isEmpty)
        let handed = fromPrimary.withLock { $0 }
        #expect(handed.count == 1)
        #expect(handed.first?.1 == client)
        #expect(try STUN.decode(try #require(handed.first?.0)) == .bindingSuccess(transaction, mapped: client))
        #expect(service.answeredFromPrimary == 1)
        #expect(service.answered == 0)
        // Change-IP cannot be honoured (one address): no answer at all.
        #expect(receive(service, STUN.bindingRequest(transaction, change: .init(changeIP: true, changePort: true))).isEmpty)
        #expect(fromPrimary.withLock { $0.count } == 1)
    }

    @Test func withoutAMainPortChangePortGetsNoAnswer() {
        let service = STUNOnlyService()
        var random = SystemRandomNumberGenerator()
        #expect(receive(service, STUN.bindingRequest(.random(using: &random), change: .init(changePort: true))).isEmpty)
        #expect(service.answeredFromPrimary == 0)
    }
}
