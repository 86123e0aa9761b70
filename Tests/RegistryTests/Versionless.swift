@testable import Registry

// Entries carry the roster version of their last visible change: the roster's bookkeeping,
// which the tests of registration rules compare apart (RosterTests and the roster tests in
// ExtendedRegistryTests check versions). These set it to 0 so the rules read plainly.

func versionless(_ entry: Registry.Entry?) -> Registry.Entry? {
    guard var entry else { return nil }
    entry.version = 0
    return entry
}

func versionless(_ entries: [Registry.Entry]) -> [Registry.Entry] { entries.compactMap { versionless($0) } }

func versionless(_ action: Registry.Output?) -> Registry.Output? {
    guard let action else { return nil }
    guard case .report(let event) = action else { return action }
    switch event {
    case .registered(let entry): return versionless(entry).map { .report(.registered($0)) }
    case .refreshed(let entry): return versionless(entry).map { .report(.refreshed($0)) }
    case .moved(let entry, let from): return versionless(entry).map { .report(.moved($0, from: from)) }
    case .unregistered(let entry): return versionless(entry).map { .report(.unregistered($0)) }
    case .evicted(let entry): return versionless(entry).map { .report(.evicted($0)) }
    default: return action
    }
}

func versionless(_ actions: [Registry.Output]) -> [Registry.Output] { actions.compactMap { versionless($0) } }
