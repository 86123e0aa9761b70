import AddressDiscovery
import Addressing
import Logging
import MonotonicTime
import NIOCore
import NIOPosix
import STUN
import Synchronization
import Transport
import TransportPosix

/// Runs a ``RemapProbe`` from a fresh UDP socket of its own (bound to the chat socket's
/// address, any port), then closes it: the probe spoils that socket's flow to the server's
/// main port on purpose, so it must never be the chat socket.
public enum RemapProbeRunner {
    typealias Driver = STUNProbeDriver<RemapProbe>

    /// Starts the probe and returns at once; `completion` gets the outcome once (on an event
    /// loop thread), `.noAnswer` when the socket cannot be bound. The socket is closed after.
    public static func start(primary: Endpoint, alternate: Endpoint, bindAddress: String, logger: Logger,
                             completion: @escaping @Sendable (RemapProbe.Outcome) -> Void) {
        let host = Mutex<DatagramHost<Driver>?>(nil)
        let done = Atomic<Bool>(false)
        let finish: @Sendable (RemapProbe.Outcome) -> Void = { outcome in
            guard !done.exchange(true, ordering: .acquiringAndReleasing) else { return }
            completion(outcome)
            if let bound = host.withLock({ $0 }) { Task { await bound.close() } }
        }
        Task {
            do {
                let bound = try await DatagramHost<Driver>.bind(host: bindAddress, port: 0, group: MultiThreadedEventLoopGroup.singleton,
                                                                logger: logger) {
                    var random = SystemRandomNumberGenerator()
                    return Driver(probe: RemapProbe(primary: primary, alternate: alternate, random: &random), finished: finish)
                }
                host.withLock { $0 = bound }
                if done.load(ordering: .acquiring) {
                    await bound.close()
                    return
                }
                bound.perform { driver, output, now in driver.start(now: now, output: &output) }
            } catch {
                logger.debug("remap probe: cannot bind a socket", metadata: ["error": "\(error)"])
                finish(.noAnswer)
            }
        }
    }
}

extension RemapProbeRunner {
    /// ``start(primary:alternate:bindAddress:logger:completion:)``, waiting for the outcome
    /// (at most ~2.5 s: two phases of four sends 300 ms apart); for `natchat --probe`.
    public static func run(primary: Endpoint, alternate: Endpoint, bindAddress: String, logger: Logger) -> RemapProbe.Outcome {
        let result = Mutex<RemapProbe.Outcome?>(nil)
        let settled = DispatchSemaphoreBox()
        start(primary: primary, alternate: alternate, bindAddress: bindAddress, logger: logger) { outcome in
            result.withLock { $0 = outcome }
            settled.signal()
        }
        settled.wait()
        return result.withLock { $0 } ?? .noAnswer
    }

    /// The `natchat --probe` line for `outcome`.
    public static func probeLine(_ outcome: RemapProbe.Outcome) -> String {
        switch outcome {
        case .keepsMapping: "unsolicited inbound: dropped, mapping kept"
        case .remapsAfterUnsolicited(let alternate, let primary):
            "unsolicited inbound: remaps the mapping (\(alternate) became \(primary)); this side punches first"
        case .acceptsUnsolicited: "unsolicited inbound: delivered (endpoint-independent filtering)"
        case .noAnswer: "unsolicited inbound: not tested (no answer to the change-port request)"
        case .changePortUnsupported: "unsolicited inbound: not tested (the server ignores CHANGE-REQUEST)"
        }
    }
}
