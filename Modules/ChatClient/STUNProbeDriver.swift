import AddressDiscovery
import Addressing
import MonotonicTime
import NIOCore
import STUN
import Transport

/// A STUN probe core (``MappingProbe``, ``RemapProbe``) as the driver of a socket of its own:
/// the one shape both probes share, so the two runners drive them the same way.
protocol STUNProbeCore: Sendable {
    associatedtype Outcome: Sendable
    /// What to do: send a request, or the outcome once settled.
    mutating func begin(now: Instant) -> [STUNProbeStep<Outcome>]
    mutating func take(_ message: STUN.Message, from source: Endpoint, now: Instant) -> [STUNProbeStep<Outcome>]
    mutating func tick(now: Instant) -> [STUNProbeStep<Outcome>]
    var nextDeadline: Instant? { get }
}

enum STUNProbeStep<Outcome> {
    case send([UInt8], to: Endpoint)
    case settled(Outcome)
}

extension MappingProbe: STUNProbeCore {
    mutating func begin(now: Instant) -> [STUNProbeStep<Outcome>] { start(now: now).map(Self.step) }
    mutating func take(_ message: STUN.Message, from source: Endpoint, now: Instant) -> [STUNProbeStep<Outcome>] {
        receive(message, from: source).map(Self.step)
    }
    mutating func tick(now: Instant) -> [STUNProbeStep<Outcome>] { handleTimeout(now: now).map(Self.step) }

    private static func step(_ output: Output) -> STUNProbeStep<Outcome> {
        switch output {
        case .send(let bytes, let destination): .send(bytes, to: destination)
        case .settled(let outcome): .settled(outcome)
        }
    }
}

extension RemapProbe: STUNProbeCore {
    mutating func begin(now: Instant) -> [STUNProbeStep<Outcome>] { start(now: now).map(Self.step) }
    mutating func take(_ message: STUN.Message, from source: Endpoint, now: Instant) -> [STUNProbeStep<Outcome>] {
        receive(message, from: source, now: now).map(Self.step)
    }
    mutating func tick(now: Instant) -> [STUNProbeStep<Outcome>] { handleTimeout(now: now).map(Self.step) }

    private static func step(_ output: Output) -> STUNProbeStep<Outcome> {
        switch output {
        case .send(let bytes, let destination): .send(bytes, to: destination)
        case .settled(let outcome): .settled(outcome)
        }
    }
}

/// Drives one ``STUNProbeCore`` on its socket; `finished` gets the outcome.
final class STUNProbeDriver<Core: STUNProbeCore>: DatagramDriver {
    var probe: Core
    let finished: @Sendable (Core.Outcome) -> Void

    init(probe: Core, finished: @escaping @Sendable (Core.Outcome) -> Void) {
        self.probe = probe
        self.finished = finished
    }

    func start(now: Instant, output: inout DatagramOutput) {
        run(probe.begin(now: now), output: &output)
    }

    func receive(_ payload: ByteBuffer, from source: Endpoint, now: Instant, output: inout DatagramOutput) {
        guard let message = try? STUN.decode(Array(payload.readableBytesView)) else { return }
        run(probe.take(message, from: source, now: now), output: &output)
    }

    func timeout(now: Instant, output: inout DatagramOutput) {
        run(probe.tick(now: now), output: &output)
    }

    func nextDeadline() -> Instant? { probe.nextDeadline }

    private func run(_ steps: [STUNProbeStep<Core.Outcome>], output: inout DatagramOutput) {
        for step in steps {
            switch step {
            case .send(let bytes, let destination): output.send(bytes, to: destination)
            case .settled(let outcome): finished(outcome)
            }
        }
    }
}
